"""Class-conditional sampling (``label=``) judged by a classifier, on the digits model.

Trains the default digits autoencoder (labels kept in its bundle) into a temporary store, fits
its OT map with the service's worker, then for each class c draws class-c samples exactly as
``/sample?label=c`` does and decodes them. A classifier trained on the digits' training split
labels the decoded images: the share it assigns to c is the figure. Unconditional samples of the
same count give the baseline class histogram (about 10 % per class).

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

from bench.common import emit, machine_info  # noqa: E402
from models import ClassifierTrainConfig, load_digits_dataset, train_classifier  # noqa: E402
from models.classifier import features_and_predictions  # noqa: E402
from service.conditional import sample_class  # noqa: E402
from service.job_config import job_config  # noqa: E402
from service.serving import ServingIndex  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402
from service.training import digits_plan, train_into_store  # noqa: E402
from service.worker import Worker  # noqa: E402


def _serving(root: Path, target_l1: float, seed: int) -> ServingIndex:
    settings = Settings(
        store=root, worker=False, embedded_default=False, target_l1=target_l1, device="cpu"
    )
    store = ModelStore(root)
    started = time.perf_counter()
    train_into_store(store, "digits", digits_plan(seed), fit=job_config(settings))
    trained = time.perf_counter()
    Worker(store, settings).run(idle_exit=True)
    emit(
        {
            "kind": "setup",
            "train_seconds": round(trained - started, 1),
            "fit_seconds": round(time.perf_counter() - trained, 1),
            "machine": machine_info(),
        }
    )
    return ServingIndex(store, settings)


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
        served = _serving(Path(tmp) / "store", args.target_l1, args.seed).get("digits")
        shares: dict[str, list[float]] = {"extended": [], "pure": []}
        for extended, key in ((True, "extended"), (False, "pure")):
            z = served.ext_map.sample(10 * args.n, seed=args.seed, extended=extended)
            _, preds = features_and_predictions(classifier.model, served.bundle.decode(z))
            hist = np.bincount(preds, minlength=10) / preds.size
            emit({"kind": "unconditional", "map": key, "class_shares": hist.round(3).tolist()})
            for label in served.classes:
                started = time.perf_counter()
                latents = sample_class(served, label, args.n, args.seed, extended)
                seconds = time.perf_counter() - started
                _, preds = features_and_predictions(classifier.model, served.bundle.decode(latents))
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
                "version": served.version,
                "served_l1": served.accuracy.l1 if served.accuracy else None,
                "mean_classified_as_label": {
                    k: round(float(np.mean(v)), 4) for k, v in shares.items()
                },
            }
        )


if __name__ == "__main__":
    main()
