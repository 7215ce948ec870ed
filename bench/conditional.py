"""Class-conditional sampling (``label=``) judged by a classifier, on the digits model.

Trains the default digits autoencoder (labels kept in its bundle), fits its OT map and builds
the potential with the solver's defaults (what the service's worker does, without the service),
then for each class c draws class-c samples exactly as ``/sample?label=c`` does
(``ExtendedMap.sample(..., cells=...)`` over the cells whose training codes are mostly c) and
decodes them. A classifier trained on the digits' training split labels the decoded images: the
share it assigns to c is the figure. Unconditional samples of the same count give the baseline
class histogram (about 10 % per class).

Prints one JSON object per line: the setup, one line per class and map, the summary. Usage::

    python bench/conditional.py --n 300        # 300 samples per class, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from models import (
    Bundle,
    ClassifierTrainConfig,
    load_digits_dataset,
    train_classifier,
    train_default_digits,
)
from models.classifier import features_and_predictions
from solver import FitConfig, Potential, fit, make_problem


def _fitted(root: Path, target_l1: float, seed: int) -> tuple[Bundle, Potential]:
    """The digits bundle and the potential fitted to its latents."""
    started = time.perf_counter()
    bundle = train_default_digits(root / "digits", seed=seed)
    trained = time.perf_counter()
    problem = make_problem(bundle.latents)
    result = fit(problem, FitConfig(target_l1=target_l1, seed=seed))
    potential = Potential.build(problem, result.heights, seed=seed, accuracy=result.accuracy)
    emit(
        {
            "kind": "setup",
            "train_seconds": round(trained - started, 1),
            "fit_seconds": round(time.perf_counter() - trained, 1),
            "fit_l1": result.accuracy.l1 if result.accuracy else None,
            "machine": machine_info(),
        }
    )
    return bundle, potential


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="samples per class")
    parser.add_argument("--target-l1", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classifier = train_classifier(
        load_digits_dataset(split="train"),
        ClassifierTrainConfig(epochs=30, seed=args.seed, progress=False, device="cpu"),
        test=load_digits_dataset(split="test"),
    )
    emit({"kind": "classifier", "test_accuracy": round(classifier.test_accuracy, 4)})
    with tempfile.TemporaryDirectory() as tmp:
        bundle, potential = _fitted(Path(tmp), args.target_l1, args.seed)
    assert bundle.labels is not None  # the digits bundle keeps its labels
    ext = potential.extended_map
    labels = potential.cell_labels(bundle.labels)
    classes = [int(c) for c in np.unique(labels[labels >= 0])]
    shares: dict[str, list[float]] = {"extended": [], "pure": []}
    for extended, key in ((True, "extended"), (False, "pure")):
        z = ext.sample(10 * args.n, seed=args.seed, extended=extended)
        _, preds = features_and_predictions(classifier.model, bundle.decode(z))
        hist = np.bincount(preds, minlength=10) / preds.size
        emit({"kind": "unconditional", "map": key, "class_shares": hist.round(3).tolist()})
        for label in classes:
            started = time.perf_counter()
            latents = ext.sample(args.n, seed=args.seed, extended=extended, cells=labels == label)
            seconds = time.perf_counter() - started
            _, preds = features_and_predictions(classifier.model, bundle.decode(latents))
            share = float((preds == label).mean())
            shares[key].append(share)
            emit(
                {
                    "kind": "class",
                    "map": key,
                    "label": label,
                    "n": args.n,
                    "classified_as_label": round(share, 4),
                    "sample_ms": round(1000 * seconds, 1),
                }
            )
    emit(
        {
            "kind": "summary",
            "fit_l1": potential.accuracy.l1 if potential.accuracy else None,
            "mean_classified_as_label": {k: round(float(np.mean(v)), 4) for k, v in shares.items()},
        }
    )


if __name__ == "__main__":
    main()
