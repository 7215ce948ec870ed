"""Command line: ``aeot demo`` fits the OT map on a real 2D problem and reports accuracy."""

from __future__ import annotations

import time

import numpy as np
import typer

from solver import FitConfig, fit, make_problem

app = typer.Typer(help="AE-OT: autoencoder + semi-discrete optimal transport generative model.")


@app.callback()
def main() -> None:
    """AE-OT command line."""


@app.command()
def demo(
    samples: int = typer.Option(512, help="points drawn from the 25-Gaussian grid"),
    target_l1: float = typer.Option(0.02, help="stop at this L1 error (independent sample)"),
    seed: int = typer.Option(0, help="seed of the data and of the fit"),
) -> None:
    """Fit the OT map onto the 25-Gaussian grid of the paper's Table 2 and print accuracy/time."""
    rng = np.random.default_rng(seed)
    means = np.array([(-4 + 2 * i, -4 + 2 * j) for i in range(5) for j in range(5)], float)
    points = means[rng.integers(0, 25, samples)] + 0.05 * rng.standard_normal((samples, 2))
    start = time.perf_counter()
    last = [0.0]

    def progress(p) -> None:  # noqa: ANN001
        if p.record.elapsed - last[0] >= 1.0 or p.record.check is not None:
            last[0] = p.record.elapsed
            typer.echo(f"  iteration {p.record.iteration:4d}  samples {p.record.n_samples:9d}"
                       f"  L1 (fit sample) {p.record.train_l1:.4f}")

    result = fit(make_problem(points), FitConfig(target_l1=target_l1, seed=seed), callback=progress)
    acc = result.accuracy
    typer.echo(
        f"{result.reason}: L1 {acc.l1:.4f} (noise floor {acc.noise_floor:.4f}, "
        f"{acc.n_samples} independent samples), max relative error {acc.max_rel_error:.3f}, "
        f"empty cells {acc.empty_cells}, {result.iterations} iterations, "
        f"{time.perf_counter() - start:.1f} s on backend {result.backend}"
    )
