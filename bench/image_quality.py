"""Image-quality benchmark: AE-OT against reconstructions and simple latent samplers.

For each dataset (MNIST, Fashion-MNIST): train (or reuse) the evaluation classifier and the
autoencoder on a training subset, fit semi-discrete OT to the latents, then compare

- ``real-train``: the training-subset images themselves (the metrics' floor),
- ``ae-reconstruction``: decoded training latents (what AE-OT can reach at best),
- ``ae-reconstruction-test``: decoded latents of held-out images,
- ``ae-ot-extended``: AE-OT with the extended map T~ (singular set by the default rule),
- ``ae-ot-pure``: AE-OT with the pure OT map T (reproduces training latents),
- ``gaussian``: one Gaussian fitted to the latents,
- ``gmm``: a Gaussian mixture (scikit-learn) fitted to the latents,

on classifier features (NOT Inception FID; see ``models.evaluate``). Prints one JSON object per
line and a markdown table; writes sample grids to ``--out``.

    python bench/image_quality.py --subset 10000 --epochs 8 --decoder-epochs 4
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import (
    METRIC_NOTE,
    AutoencoderConfig,
    Bundle,
    ClassifierTrainConfig,
    QualityReport,
    TrainConfig,
    cpu_threads,
    evaluate_images,
    load_bundle,
    load_classifier,
    load_idx_dataset,
    make_reference,
    save_classifier,
    train_and_save,
    train_classifier,
)
from solver import (
    ExtendedMap,
    FitConfig,
    atomic_write_bytes,
    build_extended_map,
    fit,
    make_problem,
)

NAME = "image_quality"
GOALS = {"mnist": 1.2, "fashion-mnist": 1.5}  # AE-OT cFID at most this x reconstructions'
KL_GOAL = 0.02


# ----------------------------------------------------------------------------- steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    # The team keeps verified MNIST / Fashion-MNIST copies in shared/data beside the repo.
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    p.add_argument("--data-root", default=str(shared))
    p.add_argument("--subset", type=int, default=10000, help="AE/OT training images")
    p.add_argument("--epochs", type=int, default=8, help="joint epochs at most")
    p.add_argument("--decoder-epochs", type=int, default=4)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--samples", type=int, default=10000, help="images per sampler")
    p.add_argument("--classifier-subset", type=int, default=60000)
    p.add_argument("--classifier-epochs", type=int, default=2)
    p.add_argument("--gmm-components", type=int, default=10)
    p.add_argument("--ot-target-l1", type=float, default=0.1)
    p.add_argument("--ot-time-budget", type=float, default=600.0)
    p.add_argument(
        "--map-samples-per-cell",
        type=int,
        default=32,
        help="Monte Carlo samples per cell of the extended map's pass",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/out")
    p.add_argument("--reuse", action="store_true", help="reuse classifier/bundle in --out")
    return p.parse_args(argv)


def machine(args: argparse.Namespace) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg()[0],
        "platform": platform.platform(),
    }


def get_classifier(args, name, train, test, out: Path):
    path = out / f"classifier-{name}.safetensors"
    if args.reuse and path.is_file():
        return load_classifier(path)
    config = ClassifierTrainConfig(epochs=args.classifier_epochs, seed=args.seed)
    trained = train_classifier(train.subset(args.classifier_subset, args.seed), config, test=test)
    save_classifier(path, trained)
    return trained


def get_bundle(args, data, out: Path) -> Bundle:
    path = out / f"bundle-{data.name}"
    arch = AutoencoderConfig(image_shape=data.image_shape, latent_dim=args.latent_dim)
    config = TrainConfig(
        max_joint_epochs=args.epochs, decoder_epochs=args.decoder_epochs, seed=args.seed
    )
    if args.reuse and path.is_dir():
        bundle = load_bundle(path)
        if bundle.config.autoencoder == arch and bundle.config.n_latents == len(data):
            return bundle
    return train_and_save(data, arch, config, path, checkpoint=out / f"ae-{data.name}.pt")


def fit_ot(args, latents: np.ndarray, cache: Path | None = None) -> tuple[ExtendedMap, dict]:
    """Fit OT to the latents (or reuse the heights cached for exactly these latents)."""
    problem = make_problem(latents)
    digest = hashlib.sha256(np.ascontiguousarray(problem.targets).tobytes()).hexdigest()
    if cache is not None and args.reuse and cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            if str(f["digest"]) == digest:
                heights = f["heights"]
                info = json.loads(str(f["info"]))
                return _extended(args, problem, heights, {**info, "reused": True})
    config = FitConfig(target_l1=args.ot_target_l1, time_budget=args.ot_time_budget, seed=args.seed)
    result = fit(problem, config)
    acc = result.accuracy
    info = {
        "n_targets": problem.n_targets,
        "dim": problem.dim,
        "method": result.method,
        "converged": result.converged,
        "reason": result.reason,
        "seconds": result.elapsed,
        "iterations": result.iterations,
        "target_l1": args.ot_target_l1,
        "l1": acc.l1 if acc else None,
        "empty_cells": acc.empty_cells if acc else None,
        "noise_floor": acc.noise_floor if acc else None,
        "backend": result.backend,
    }
    if cache is not None:
        buf = io.BytesIO()
        np.savez(
            buf, heights=result.heights, digest=np.array(digest), info=np.array(json.dumps(info))
        )
        atomic_write_bytes(cache, buf.getvalue())
    return _extended(args, problem, result.heights, info)


def _extended(args, problem, heights: np.ndarray, info: dict) -> tuple[ExtendedMap, dict]:
    ext = build_extended_map(
        problem.targets,
        heights,
        n_samples=args.map_samples_per_cell * problem.n_targets,
        seed=args.seed,
    )
    info["singular"] = {
        "rule": ext.singular_set.rule.name,
        "threshold": ext.singular_set.threshold,
        "frame": ext.singular_set.frame,
        "gap_ratio": ext.singular_set.gap_ratio,
        "pairs": ext.singular_set.n_pairs,
        "singular_pairs": ext.singular_set.n_singular,
        "k": ext.k,
        "power": ext.power,
    }
    return ext, info


def sampler_latents(args, bundle: Bundle, ot: ExtendedMap, n: int) -> dict:
    """Latents of every latent-space sampler (or the reason it is unavailable)."""
    from sklearn.mixture import GaussianMixture

    z = np.asarray(bundle.latents, dtype=np.float64)
    rng = np.random.default_rng(args.seed + 1)
    out: dict[str, np.ndarray | str] = {}
    for name, extended in (("ae-ot-extended", True), ("ae-ot-pure", False)):
        out[name] = ot.sample(n, seed=args.seed + 2, extended=extended)
    out["gaussian"] = rng.multivariate_normal(z.mean(0), np.cov(z, rowvar=False), size=n)
    gmm = GaussianMixture(args.gmm_components, covariance_type="full", random_state=args.seed)
    samples = gmm.fit(z).sample(n)[0]
    out["gmm"] = samples[rng.permutation(n)]  # sklearn returns them grouped by component
    return out


def save_grid(images: np.ndarray, path: Path, side: int = 10, zoom: int = 2) -> None:
    c, h, w = images.shape[1:]
    n = min(side * side, len(images))
    grid = np.ones((c, side * (h + 1), side * (w + 1)), np.float32)
    for i in range(n):
        r, q = divmod(i, side)
        grid[:, r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = images[i]
    pixels = (grid.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST).save(path)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def run_dataset(args: argparse.Namespace, name: str, out: Path) -> list[dict]:
    """Train or reuse models for one dataset, then score every sampler; returns the rows."""
    directory = Path(args.data_root) / name
    full_train = load_idx_dataset(directory, split="train", name=name)
    test = load_idx_dataset(directory, split="test", name=name)
    data = full_train.subset(args.subset, args.seed)
    n = min(args.samples, len(data), len(test))
    base = {"name": NAME, "dataset": name, "machine": machine(args), "note": METRIC_NOTE}
    sizes = {
        "ae_train": len(data),
        "classifier_train": min(args.classifier_subset, len(full_train)),
        "reference_test": min(n, len(test) // 2) if len(test) < 2 * n else n,
        "generated": n,
    }

    start = time.perf_counter()
    clf = get_classifier(args, name, full_train, test, out)
    bundle = get_bundle(args, data, out)
    ot, ot_info = fit_ot(args, bundle.latents, out / f"ot-{name}.npz")
    emit(
        {
            **base,
            "sampler": "setup",
            "sizes": sizes,
            "classifier_test_accuracy": clf.test_accuracy,
            "autoencoder": bundle.config.to_dict(),
            "train_metrics": {
                k: v
                for k, v in (bundle.metrics.to_dict() if bundle.metrics else {}).items()
                if k != "history"
            },
            "ot_fit": ot_info,
            "seconds": time.perf_counter() - start,
        }
    )

    # The reference and the held-out reconstructions never share test images: when the test
    # split cannot hold n of each, each takes half of a seeded permutation. (Not the first and
    # second halves: MNIST's test halves come from different writers, and that shift alone
    # moved the classifier FID of the real training images from 1.3 to 11.8.)
    n_ref = sizes["reference_test"]
    order = np.random.default_rng(args.seed).permutation(len(test))
    reference = make_reference(clf.model, test.images[np.sort(order[:n_ref])], data.images)
    held_out = test.images[np.sort(order[n_ref : n_ref + n])]
    images: dict[str, np.ndarray | str] = {
        "real-train": data.images[:n],
        "ae-reconstruction": bundle.decode(bundle.latents[:n]),
        "ae-reconstruction-test": bundle.decode(bundle.encode(held_out)),
    }
    for sampler, z in sampler_latents(args, bundle, ot, n).items():
        images[sampler] = z if isinstance(z, str) else bundle.decode(z.astype(np.float32))
    rows = []
    for sampler, imgs in images.items():
        if isinstance(imgs, str):
            row = {**base, "sampler": sampler, "sizes": sizes, "metrics": None, "status": imgs}
        else:
            report: QualityReport = evaluate_images(imgs, clf.model, reference)
            save_grid(imgs, out / f"{name}-{sampler}.png")
            row = {**base, "sampler": sampler, "sizes": sizes, "metrics": report.to_dict()}
        emit(row)
        rows.append(row)
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """One verdict per dataset: AE-OT cFID vs reconstructions, vs Gaussian/GMM, class KL."""
    verdicts = []
    for dataset in sorted({r["dataset"] for r in rows}):
        m = {r["sampler"]: r["metrics"] for r in rows if r["dataset"] == dataset and r["metrics"]}
        ae_ot = "ae-ot-extended" if "ae-ot-extended" in m else "ae-ot-pure"
        fid = m[ae_ot]["classifier_fid"]
        ratio = fid / m["ae-reconstruction"]["classifier_fid"]
        verdicts.append(
            {
                "name": NAME,
                "dataset": dataset,
                "sampler": "goals",
                "ae_ot_sampler": ae_ot,
                "cfid_ratio_to_reconstruction": ratio,
                "ratio_goal": GOALS.get(dataset),
                "ratio_met": ratio <= GOALS.get(dataset, 1.2),
                "beats_gaussian": fid < m["gaussian"]["classifier_fid"],
                "beats_gmm": fid < m["gmm"]["classifier_fid"],
                "class_kl": m[ae_ot]["class_kl"],
                "class_kl_met": m[ae_ot]["class_kl"] <= KL_GOAL,
            }
        )
    return verdicts


def markdown(rows: list[dict]) -> str:
    lines = [
        "| dataset | sampler | classifier FID | precision | recall | class KL | NN dist (ratio) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        if m is None:
            lines.append(f"| {r['dataset']} | {r['sampler']} | {r['status']} | | | | |")
            continue
        lines.append(
            f"| {r['dataset']} | {r['sampler']} | {m['classifier_fid']:.2f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {m['class_kl']:.4f} | "
            f"{m['nn_median']:.2f} ({m['nn_ratio']:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with cpu_threads(args.threads):
        for name in args.datasets:
            rows += run_dataset(args, name, out)
    for verdict in goals(rows):
        emit(verdict)
    table = markdown(rows)
    (out / "image_quality.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
