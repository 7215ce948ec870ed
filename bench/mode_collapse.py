"""Mode collapse on the 25-Gaussian grid: the paper's Table 2 protocol (docs/benchmarks.md).

Per seed: 512 real samples from 25 Gaussians with means (-4 + 2i, -4 + 2j), i, j in 0..4, and
std 0.05; the OT map fitted to them (the data are already 2D, so no autoencoder: the map is
the generator) with the default method, exact geometry in 2D, to L1 1e-8; the extended map's
adjacency, singular set and mass centres from the exact power diagram; 2500 generated samples.
Metrics, as in PacGAN:

- modes: means with at least one generated sample within 3 std;
- high quality: share of generated samples within 3 std of their nearest mean;
- reverse KL: KL(generated mode histogram || real mode histogram), the generated histogram
  counting high-quality samples by nearest mean, the real one the 512 real samples.

Prints one JSON object per seed and variant, one summary object per variant (mean +- std over
the seeds), then a markdown table beside the paper's rows. Writes, for the first seed, the
power diagram with its singular facets and the real vs generated scatter as PNGs.

Usage::

    python bench/mode_collapse.py                      # 10 seeds, pictures in bench/out/
    python bench/mode_collapse.py --seeds 2 --pictures docs/img
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from solver import (
    FitConfig,
    GapThreshold,
    QuantileThreshold,
    build_extended_map,
    fit,
    make_problem,
)
from solver.plots import power_diagram_png, samples_png

STD = 0.05
MEANS = np.array([(-4 + 2 * i, -4 + 2 * j) for i in range(5) for j in range(5)], dtype=float)
# Paper Table 2 (AE-OT, PacGAN4, GAN): modes, high-quality %, reverse KL.
PAPER = [
    ("GAN (paper)", "17.3", "94.8", "0.70"),
    ("PacGAN4 (paper)", "24.8", "93.6", "0.04"),
    ("AE-OT (paper)", "25.0 +- 0.0", "99.8 +- 0.2", "0.007 +- 0.002"),
]


def grid_samples(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of the 25-Gaussian grid, modes chosen uniformly."""
    return MEANS[rng.integers(0, len(MEANS), n)] + STD * rng.standard_normal((n, 2))


def mode_metrics(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Modes covered, high-quality share (%) and reverse KL of ``generated`` against ``real``."""
    dist = np.linalg.norm(generated[:, None, :] - MEANS[None], axis=2)
    nearest, close = dist.argmin(axis=1), dist.min(axis=1) <= 3 * STD
    gen_hist = np.bincount(nearest[close], minlength=len(MEANS)).astype(float)
    real_hist = np.bincount(
        np.linalg.norm(real[:, None, :] - MEANS[None], axis=2).argmin(axis=1),
        minlength=len(MEANS),
    ).astype(float)
    p, q = gen_hist / max(gen_hist.sum(), 1.0), real_hist / real_hist.sum()
    support = p > 0
    kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
    real_dist = np.linalg.norm(real[:, None, :] - MEANS[None], axis=2).min(axis=1)
    return {
        # rms distance to the nearest mean of high-quality samples, generated over real: below
        # 1 means the generator contracts the modes, 1 reproduces their spread.
        "spread_ratio": float(
            np.sqrt(np.mean(dist.min(axis=1)[close] ** 2))
            / np.sqrt(np.mean(real_dist[real_dist <= 3 * STD] ** 2))
        ),
        "modes": int((gen_hist > 0).sum()),
        "high_quality_pct": 100.0 * float(close.mean()),
        "reverse_kl": kl,
    }


def run_seed(seed: int, args: argparse.Namespace, pictures: Path | None) -> list[dict]:
    """Fit, build the extended map and score each variant for one seed."""
    rng = np.random.default_rng(seed)
    real = grid_samples(args.real, rng)
    start = time.perf_counter()
    problem = make_problem(real)
    result = fit(problem, FitConfig(target_l1=args.target_l1, seed=seed))
    assert result.method == "exact", result.method
    fit_s = time.perf_counter() - start
    records = []
    variants: dict[str, dict[str, Any] | None] = {
        "extended (gap rule)": {"rule": GapThreshold()},
        "extended (gap rule, p = 2)": {"rule": GapThreshold(), "power": 2.0},
        "extended (0.9 quantile)": {"rule": QuantileThreshold(q=0.9)},
        "pure map T": None,
    }
    for name, rule in variants.items():
        t0 = time.perf_counter()
        # 2D: adjacency and mass centres come from the exact diagram, so no samples are drawn.
        ext = build_extended_map(
            problem.targets,
            result.heights,
            n_samples=1,
            seed=seed + 1,
            **(rule or {"rule": GapThreshold()}),
        )
        generated = ext.sample(args.generated, seed=seed + 2, extended=rule is not None)
        gen_s = time.perf_counter() - t0
        metrics = mode_metrics(generated, real)
        records.append(
            {
                "bench": "mode_collapse",
                "seed": seed,
                "variant": name,
                **metrics,
                "fit_method": result.method,
                "fit_iterations": result.iterations,
                "fit_l1": result.accuracy.l1 if result.accuracy else None,
                "fit_s": round(fit_s, 2),
                "map_and_sample_s": round(gen_s, 2),
                "seconds_total": round(fit_s + gen_s, 2),
                "threshold_rad": ext.singular_set.threshold,
                "rule": ext.singular_set.rule.name,
                "singular_pairs": ext.singular_set.n_singular,
                "pairs": ext.singular_set.n_pairs,
            }
        )
        if pictures is not None and name == "extended (gap rule)":
            pictures.mkdir(parents=True, exist_ok=True)
            (pictures / "grid25_power_diagram.png").write_bytes(power_diagram_png(ext))
            (pictures / "grid25_samples.png").write_bytes(
                samples_png(
                    real,
                    generated,
                    title=f"25 Gaussians: {args.real} real (grey), "
                    f"{args.generated} generated by T~ (red)",
                )
            )
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Mean and std over seeds per variant."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == name]
        summary = {"bench": "mode_collapse", "summary": name, "seeds": len(rows)}
        for key in ("modes", "high_quality_pct", "reverse_kl", "spread_ratio", "seconds_total"):
            values = np.array([r[key] for r in rows], dtype=float)
            summary[key] = float(values.mean())
            summary[key + "_std"] = float(values.std())
        out.append(summary)
    return out


def markdown(summaries: list[dict]) -> str:
    """A table of the measured variants beside the paper's rows."""
    lines = [
        "| method | modes | high quality % | reverse KL | spread ratio | s / seed |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {m} | {q} | {k} | | |" for n, m, q, k in PAPER]
    for s in summaries:
        lines.append(
            f"| {s['summary']} (measured, {s['seeds']} seeds) "
            f"| {s['modes']:.1f} +- {s['modes_std']:.1f} "
            f"| {s['high_quality_pct']:.2f} +- {s['high_quality_pct_std']:.2f} "
            f"| {s['reverse_kl']:.4f} +- {s['reverse_kl_std']:.4f} "
            f"| {s['spread_ratio']:.2f} "
            f"| {s['seconds_total']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--real", type=int, default=512)
    parser.add_argument("--generated", type=int, default=2500)
    parser.add_argument("--target-l1", type=float, default=1e-8, help="exact L1 of the fit")
    parser.add_argument(
        "--pictures",
        default="bench/out",
        help="directory for the first seed's PNGs ('' to skip)",
    )
    args = parser.parse_args()
    emit({"bench": "mode_collapse", "kind": "machine", **machine_info()})
    records: list[dict] = []
    for seed in range(args.seeds):
        # Kept a string until here: Path("") is ".", which would write into the working dir.
        pictures = Path(args.pictures) if seed == 0 and args.pictures else None
        for record in run_seed(seed, args, pictures):
            emit(record)
            records.append(record)
    summaries = summarise(records)
    for s in summaries:
        emit(s)
    print(markdown(summaries))


if __name__ == "__main__":
    main()
