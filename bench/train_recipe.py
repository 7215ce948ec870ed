"""Table 1 for a recipe: train a dataset's autoencoder under named variants, side by side.

Each variant trains the whole recipe (joint phase, then decoder phase) on the same images and
seed; runs are resumable (a checkpoint per variant in ``--out``; the same command continues an
interrupted run) and each writes its bundle there (``bundle-<data>-<variant>``), ready for
``bench/image_quality.py --reuse``. Variants (``--variants``, comma-separated):

- ``recipe``: the recipe a plan picks today (``TrainPlan.resolve``), precision ``auto``;
- ``recipe-float32``: the same in float32 (the bfloat16 tolerance; a CPU without bfloat16);
- ``paper``: the paper's recipe as the trainer ran it before: batches of 128, Adam 3e-3
  throughout both phases, the decoder's batch statistics, float32;
- ``paper-cosine``: ``paper`` with the decoder phase's cosine step (the previous best).

``--epochs`` and ``--decoder-epochs`` override the recipe's epoch counts for every variant.
Prints JSON lines: the setup (machine, load), one line per finished epoch of each variant,
one result per variant (L2 before and after freezing, epochs, seconds, load) and a summary
(each variant's L2 after freezing against the first variant's and the paper's Table 1).

    python bench/train_recipe.py /data/mnist --variants recipe --out runs/
    python bench/train_recipe.py /data/mnist --subset 10000 --variants recipe,recipe-float32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from models import (
    EpochRecord,
    TrainConfig,
    TrainPlan,
    dataset_config_for,
    load_plan_data,
    save_bundle,
    train_autoencoder,
)
from models.runtime import resolve_precision

VARIANTS = ("recipe", "recipe-float32", "paper", "paper-cosine")
# The paper's Table 1: training-set L2 (MSE per pixel) before and after freezing the encoder.
PAPER_L2 = {"mnist": (0.0013, 0.0005), "fashion-mnist": (0.0026, 0.0011)}


def variant_config(name: str, recipe: TrainConfig) -> TrainConfig:
    """The train config of a variant, from today's recipe for the images."""
    paper = replace(
        recipe,
        batch_size=128,
        lr=3e-3,
        joint_schedule="constant",
        decoder_schedule="constant",
        decoder_lr_factor=1.0,
        decoder_batch_stats=True,
        precision="float32",
    )
    variants = {
        "recipe": recipe,
        "recipe-float32": replace(recipe, precision="float32"),
        "paper": paper,
        "paper-cosine": replace(paper, decoder_schedule="cosine"),
    }
    if name not in variants:
        raise ValueError(f"unknown variant {name!r}; known: {VARIANTS}")
    return variants[name]


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="as for `aeot train`")
    parser.add_argument("--variants", default="recipe")
    parser.add_argument("--subset", type=int, default=None, help="seeded subset of the images")
    parser.add_argument("--epochs", type=int, default=None, help="joint epochs at most")
    parser.add_argument("--decoder-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/train_recipe"))
    args = parser.parse_args()
    plan = TrainPlan(
        data=dataset_config_for(args.data),
        subset=args.subset,
        epochs=args.epochs,
        decoder_epochs=args.decoder_epochs,
        seed=args.seed,
        threads=args.threads,
    )
    images = load_plan_data(plan)
    model_config, recipe = plan.resolve(images.image_shape)
    configs = {
        name: replace(variant_config(name, recipe), progress=False)
        for name in args.variants.split(",")
    }
    emit(
        {
            "kind": "setup",
            "data": images.name,
            "n_train": len(images),
            "model": model_config.to_dict(),
            "variants": {
                name: {
                    **{k: v for k, v in vars(c).items() if k not in ("progress", "device")},
                    "precision": resolve_precision(c.precision, "cpu"),
                }
                for name, c in configs.items()
            },
            "machine": machine_info(),
            "load_average": os.getloadavg(),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, config in configs.items():
        results[name] = _train(images, model_config, config, name, args.out)
    emit(_summary(images.name, results))


def _train(images, model_config, config: TrainConfig, name: str, out: Path) -> dict:
    """Train (or resume, or reuse) one variant; its bundle and result row."""

    def on_epoch(record: EpochRecord) -> None:
        emit({"kind": "epoch", "variant": name, **vars(record), "load_average": os.getloadavg()})

    started = time.perf_counter()
    checkpoint = out / f"{images.name}-{name}.pt"
    result = train_autoencoder(
        images, model_config, config, checkpoint=checkpoint, callback=on_epoch
    )
    m = result.metrics
    if result.latents is not None:
        save_bundle(
            out / f"bundle-{images.name}-{name}",
            model=result.model,
            latents=result.latents,
            dataset=images.name,
            labels=images.labels,
            metrics=m,
        )
    row = {
        "kind": "result",
        "variant": name,
        "l2_before_freeze": m.l2_before_freeze,
        "l2_after_freeze": m.l2_after_freeze,
        "joint_epochs": m.joint_epochs,
        "decoder_epochs": m.decoder_epochs,
        "freeze_reason": m.freeze_reason,
        "training_seconds": round(m.seconds, 1),
        "this_call_seconds": round(time.perf_counter() - started, 1),
        "device": m.device,
        "load_average": os.getloadavg(),
    }
    emit(row)
    return row


def _summary(data: str, results: dict[str, dict]) -> dict:
    """Each variant's L2 after freezing against the first variant's and the paper's."""
    first = next(iter(results.values()))["l2_after_freeze"]
    paper = PAPER_L2.get(data)
    return {
        "kind": "summary",
        "l2_after_freeze": {k: r["l2_after_freeze"] for k, r in results.items()},
        "ratio_to_first": {k: r["l2_after_freeze"] / first for k, r in results.items()},
        "ratio_to_paper": None
        if paper is None
        else {k: r["l2_after_freeze"] / paper[1] for k, r in results.items()},
    }


if __name__ == "__main__":
    main()
