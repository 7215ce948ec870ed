"""Does the default singular rule give the same singular set on every machine?

The embedded digits model is trained on the user's machine, and its float rounding (the BLAS
code path the CPU selects, the thread count) changes the trained weights, so every machine
fits OT to different latents. A rule that is right on one machine must stay right on the
others. This script trains the digits autoencoder under several such variations, each in its
own process with the environment that selects the code path (MKL's instruction set on an AMD
or older Intel CPU, its conditional-reproducibility mode, ATen's vector width, the OpenBLAS
kernels numpy and scipy use), plus five training seeds and two training thread counts; on
the first model it also varies what runs after training (the singular set's seed, BLAS threads,
float64 instead of float32 encoding, the cell index backend of the fit and the pass).

Each variant prints one JSON line: the default rule's cluster count and how it was chosen,
the flagged share of adjacent pairs and its precision and recall for "different labels"
(labels judge, no rule sees them), the diffusion distance's ROC AUC, the share of T~ samples
blending across labels (each fitted map), and the flag's figures for the previous count
(the largest drop of the 3-step walk's spectrum). The last line is the spread of each over
all variants.

    python bench/singular_stability.py                 # every variant (about 10 minutes)
    python bench/singular_stability.py --variants "seed 0" "MKL AVX2"
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from bench.singular_quality import median_spacing, mixing
from models import (
    DIGITS_AUTOENCODER,
    DIGITS_RECIPE,
    load_bundle,
    load_digits_dataset,
)
from models.runtime import cpu_threads
from models.train import train_and_save
from solver import (
    DEFAULT_BLEND_MARGIN,
    DEFAULT_RULE,
    Adjacency,
    ExtendedMap,
    FitConfig,
    build_extended_map,
    cluster_share_threshold,
    diffusion_distances,
    diffusion_embedding,
    find_singular_set,
    fit,
    make_problem,
    standardise_targets,
)

NAME = "singular_stability"
# Training variants: (environment of the training process, seed, training threads). The
# environment variables select the code path a different CPU would run: MKL's AVX2 or SSE4.2
# kernels (what MKL runs on AMD CPUs and older Intel ones), MKL's conditional numerical
# reproducibility mode, ATen's AVX2 kernels instead of AVX-512, OpenBLAS's Haswell kernels.
MODELS: dict[str, tuple[dict[str, str], int, int]] = {
    "seed 0": ({}, 0, 1),
    "seed 1": ({}, 1, 1),
    "seed 2": ({}, 2, 1),
    "seed 3": ({}, 3, 1),
    "seed 4": ({}, 4, 1),
    "MKL AVX2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 0, 1),
    "MKL SSE4.2": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, 0, 1),
    "MKL reproducible mode": ({"MKL_CBWR": "COMPATIBLE"}, 0, 1),
    "ATen AVX2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 0, 1),
    "OpenBLAS Haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, 0, 1),
    "2 training threads": ({}, 0, 2),
}
# Previous count: the largest drop of the t-step walk's spectrum (t = 3, K <= 50).
PREVIOUS_TIME = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(MODELS), help="training variants")
    p.add_argument("--out", default="bench/out/stability", help="models and fits are kept here")
    p.add_argument("--samples-per-cell", type=int, default=64, help="Monte Carlo pass")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one variant, in its own process
    return p.parse_args(argv)


def previous_count(eigenvalues: np.ndarray) -> int:
    """K of the previous rule: argmax_K (lambda_K^t - lambda_{K+1}^t), t = 3."""
    walk = np.clip(eigenvalues, 0.0, None) ** PREVIOUS_TIME
    return int(np.argmax(walk[:-1] - walk[1:])) + 1


def judge(targets: np.ndarray, pairs: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """The default rule's and the previous count's figures on one pass's adjacent pairs."""
    different = labels[pairs[:, 0]] != labels[pairs[:, 1]]
    s = find_singular_set(targets, _adjacency(pairs), DEFAULT_RULE, seed=seed)
    emb = diffusion_embedding(standardise_targets(targets), seed=seed)
    row: dict[str, Any] = {"clusters": s.clusters, "chosen_by": emb.chosen_by, "frame": s.frame}
    row |= _flag_figures(s.singular, different)
    row["auc"] = float(roc_auc_score(different, s.angles)) if s.frame == "diffusion" else 0.5
    row["different_share"] = float(different.mean())
    k_old = previous_count(emb.eigenvalues)
    old = diffusion_embedding(standardise_targets(targets), n_clusters=k_old, seed=seed)
    scores = diffusion_distances(old.coords, pairs)
    value, _ = cluster_share_threshold(scores, pairs, old.partitions)
    previous = _flag_figures(scores > value, different)
    row["previous"] = {"clusters": k_old, **previous}
    return row


def _flag_figures(flag: np.ndarray, different: np.ndarray) -> dict:
    hits = int(np.count_nonzero(flag & different))
    return {
        "flagged": float(flag.mean()),
        "precision": hits / max(int(flag.sum()), 1),
        "recall": hits / max(int(different.sum()), 1),
    }


def _adjacency(pairs: np.ndarray) -> Adjacency:
    ones = np.ones(len(pairs), dtype=np.int64)
    return Adjacency(pairs=pairs, counts=ones, facet_measures=ones * 0.0, n_samples=len(pairs))


def default_mixing(ext: ExtendedMap, labels: np.ndarray) -> float:
    """Share of T~ samples with more than 1 % of their blend weight on another label.

    The extended map uses the default rule's singular set (seed 0) and blend margin;
    20,000 samples, as in bench/singular_quality.py.
    """
    singular = find_singular_set(ext.targets, ext.adjacency, DEFAULT_RULE, seed=0)
    var = ext.replace(singular_set=singular, blend_margin=DEFAULT_BLEND_MARGIN)
    ns = argparse.Namespace(mix_samples=20000, seed=0, mix_weight=0.01)
    return mixing(var, labels, ns, median_spacing(ext.targets))["mixing"]


def fit_and_pass(latents: np.ndarray, labels: np.ndarray, args: argparse.Namespace, **kw) -> tuple:
    """OT fit (seed 0) and one Monte Carlo pass (seed 1): the map and each target's label."""
    backend = kw.get("backend", "auto")
    problem = make_problem(latents)
    result = fit(problem, FitConfig(target_l1=0.1, time_budget=900, seed=0, backend=backend))
    ext = build_extended_map(
        problem.targets,
        result.heights,
        n_samples=args.samples_per_cell * problem.n_targets,
        seed=1,
        backend=backend,
    )
    merged = np.empty(problem.n_targets, dtype=np.int64)
    merged[problem.inverse] = labels
    return ext, merged


def worker(name: str, args: argparse.Namespace) -> None:
    """Train one variant's model (or reuse it), fit, pass, and print its rows."""
    env, seed, threads = MODELS[name]
    out = Path(args.out) / name.replace(" ", "-").replace(".", "")
    data = load_digits_dataset(split="all")
    base = {"name": NAME, "variant": name, "environment": env, "load_average": os.getloadavg()}
    t0 = time.perf_counter()
    if (out / "bundle").is_dir():
        bundle = load_bundle(out / "bundle")
    else:
        config = replace(DIGITS_RECIPE, seed=seed, threads=threads)
        bundle = train_and_save(data, DIGITS_AUTOENCODER, config, out / "bundle")
    labels = np.asarray(bundle.labels)
    ext, merged = fit_and_pass(bundle.latents, labels, args)
    targets, pairs = ext.targets, ext.adjacency.pairs
    l2 = bundle.metrics.l2_after_freeze if bundle.metrics else None
    row = {**base, "l2_after_freeze": l2, **judge(targets, pairs, merged)}
    row["mixing"] = default_mixing(ext, merged)
    emit({**row, "seconds": round(time.perf_counter() - t0, 1)})
    if name != "seed 0":
        return
    for s in (1, 2, 3, 4):
        emit({**base, "variant": f"seed 0, singular seed {s}", **judge(targets, pairs, merged, s)})
    with cpu_threads(1):  # the other rows use every core for BLAS and torch
        row = judge(targets, pairs, merged)
    emit({**base, "variant": "seed 0, 1 thread after training", **row})
    encoder = copy.deepcopy(bundle.model.encoder).double().eval()
    with torch.no_grad():
        z64 = encoder(torch.from_numpy(data.images.astype(np.float64))).numpy()
    e64, m64 = fit_and_pass(z64.astype(np.float32), labels, args)
    row = judge(e64.targets, e64.adjacency.pairs, m64) | {"mixing": default_mixing(e64, m64)}
    emit({**base, "variant": "seed 0, float64 encoder", **row})
    for backend in ("simd", "faiss"):
        eb, mb = fit_and_pass(bundle.latents, labels, args, backend=backend)
        row = judge(eb.targets, eb.adjacency.pairs, mb) | {"mixing": default_mixing(eb, mb)}
        emit({**base, "variant": f"seed 0, {backend} fit and pass", **row})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    emit({"name": NAME, "kind": "machine", "machine": machine_info(), "load": os.getloadavg()})
    rows: list[dict] = []
    for name in args.variants:
        env = {**os.environ, **MODELS[name][0]}
        cmd = [sys.executable, __file__, "--worker", name, "--out", args.out]
        cmd += ["--samples-per-cell", str(args.samples_per_cell)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
                print(line, flush=True)
    emit(summary(rows))


def summary(rows: list[dict]) -> dict:
    """Range of each figure over the variants, for the default rule and the previous count."""

    def spread(values: list[float]) -> list[float]:
        return [round(min(values), 4), round(max(values), 4)]

    out: dict = {"name": NAME, "kind": "summary", "variants": len(rows)}
    for key in ("clusters", "flagged", "precision", "recall", "auc", "different_share", "mixing"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = spread(values)
    for key in ("clusters", "flagged", "precision", "recall"):
        out[f"previous_{key}"] = spread([r["previous"][key] for r in rows])
    out["load_average"] = os.getloadavg()
    return out


if __name__ == "__main__":
    main()
