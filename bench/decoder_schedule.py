"""The decoder phase's step, constant against cosine, from one joint phase (Table 1, L2).

Trains the joint phase of a dataset's recipe once (the plan's defaults: the conv autoencoder
with d = 32 on 28x28 images, the MLP on the 8x8 digits) and keeps its checkpoint from the
moment the encoder froze. Then runs the decoder phase once per schedule and decoder-epoch
count from that same state, so the rows differ in nothing but the decoder phase: the same
encoder, latents and L2 before freezing. ``--joint-checkpoint`` keeps that checkpoint (and
reuses it when it exists, so more schedules can be added later without the joint phase).

Prints JSON lines: the setup (machine, load), the joint phase, one line per decoder phase
(L2 before and after freezing, each decoder epoch's training loss, seconds), the summary.

    python bench/decoder_schedule.py                      # digits, a minute on one core
    python bench/decoder_schedule.py /data/mnist --threads 2 --joint-checkpoint mnist-joint.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from models import (
    AutoencoderConfig,
    ImageDataset,
    TrainPlan,
    dataset_config_for,
    load_plan_data,
)
from models.train import DECODER_SCHEDULES, TrainConfig, train_autoencoder


def _joint_phase(
    images: ImageDataset, model_config: AutoencoderConfig, recipe: TrainConfig, checkpoint: Path
) -> None:
    """Train the joint phase into ``checkpoint`` (no decoder epochs), unless it is there."""
    if checkpoint.is_file():
        emit({"kind": "joint", "reused": str(checkpoint)})
        return
    started = time.perf_counter()
    result = train_autoencoder(
        images, model_config, replace(recipe, decoder_epochs=0), checkpoint=checkpoint
    )
    emit(
        {
            "kind": "joint",
            "joint_epochs": result.metrics.joint_epochs,
            "freeze_reason": result.metrics.freeze_reason,
            "l2_before_freeze": result.metrics.l2_before_freeze,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


def _branch(joint: Path, out: Path, config: TrainConfig) -> None:
    """Copy the joint checkpoint as the start of a decoder phase under ``config``.

    A checkpoint resumes only under the config it was written with, so the copy carries the
    new one; its state goes back to the first decoder epoch (a joint run with no decoder
    epochs ends "done" the moment the encoder freezes).
    """
    payload = torch.load(joint, map_location="cpu", weights_only=True)
    state = payload["state"]
    if state["epoch"] != state["joint_epochs"] or state["phase"] not in ("decoder", "done"):
        raise ValueError(f"{joint} is not a checkpoint taken when the encoder froze")
    payload["state"] = {**state, "phase": "decoder", "l2_after": float("nan")}
    payload["train_config"] = asdict(config)
    torch.save(payload, out)


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default="digits", help="as for `aeot train`")
    parser.add_argument("--subset", type=int, default=None, help="seeded subset of the images")
    parser.add_argument("--epochs", type=int, default=None, help="joint epochs (recipe's)")
    parser.add_argument(
        "--decoder-epochs", default=None, help="comma-separated counts (default: the recipe's)"
    )
    parser.add_argument("--schedules", default=",".join(DECODER_SCHEDULES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--joint-checkpoint", type=Path, default=None)
    args = parser.parse_args()
    schedules = args.schedules.split(",")
    plan = TrainPlan(
        data=dataset_config_for(args.data),
        subset=args.subset,
        epochs=args.epochs,
        seed=args.seed,
        device="cpu",
        threads=args.threads,
    )
    images = load_plan_data(plan)
    model_config, recipe = plan.resolve(images.image_shape)
    recipe = replace(recipe, progress=False)
    counts = (
        [recipe.decoder_epochs]
        if args.decoder_epochs is None
        else [int(n) for n in args.decoder_epochs.split(",")]
    )
    emit(
        {
            "kind": "setup",
            "data": images.name,
            "n_train": len(images),
            "model": model_config.to_dict(),
            "joint_epochs_at_most": recipe.max_joint_epochs,
            "lr": recipe.lr,
            "machine": machine_info(),
            "threads": args.threads,
            "load_average": os.getloadavg(),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        joint = args.joint_checkpoint or Path(tmp) / "joint.pt"
        _joint_phase(images, model_config, recipe, joint)
        rows = []
        for count in counts:
            for schedule in schedules:
                config = replace(recipe, decoder_schedule=schedule, decoder_epochs=count)
                branch = Path(tmp) / f"{schedule}-{count}.pt"
                _branch(joint, branch, config)
                started = time.perf_counter()
                result = train_autoencoder(images, model_config, config, checkpoint=branch)
                m = result.metrics
                row = {
                    "kind": "decoder_phase",
                    "schedule": schedule,
                    "decoder_epochs": count,
                    "l2_before_freeze": m.l2_before_freeze,
                    "l2_after_freeze": m.l2_after_freeze,
                    "drop": 1.0 - m.l2_after_freeze / m.l2_before_freeze,
                    "epoch_losses": [r.loss for r in m.history if r.phase == "decoder"],
                    "seconds": round(time.perf_counter() - started, 1),
                    "load_average": os.getloadavg(),
                }
                emit(row)
                rows.append(row)
    best = min(rows, key=lambda r: r["l2_after_freeze"])
    emit(
        {
            "kind": "summary",
            "best": {k: best[k] for k in ("schedule", "decoder_epochs", "l2_after_freeze")},
            "l2_after_freeze": {
                f"{r['schedule']}-{r['decoder_epochs']}": r["l2_after_freeze"] for r in rows
            },
        }
    )


if __name__ == "__main__":
    main()
