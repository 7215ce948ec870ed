"""A small CNN classifier per dataset: the feature extractor of the image-quality metrics.

Inception weights cannot be downloaded here, so the benchmarks use the penultimate features
(128-d, after ReLU) of this classifier, trained in the project on the dataset's training split.
Distances on these features are *not* comparable with Inception FID numbers in papers.

Architecture: conv 3x3 -> ReLU -> maxpool 2 -> conv 3x3 -> ReLU -> maxpool 2 -> FC 128 -> ReLU
(features) -> FC classes. No BatchNorm or dropout, so features do not depend on train/eval mode.
A trained classifier is one safetensors file whose metadata holds its config and test accuracy.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from models.datasets import ImageDataset
from models.runtime import cpu_threads, resolve_device

CLASSIFIER_FORMAT = "aeot-classifier/1"


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Architecture of the evaluation classifier.

    Attributes:
        image_shape: ``(C, H, W)``; H and W divisible by 4.
        n_classes: number of classes.
        channels: channels of the two convolutions.
        features: width of the penultimate (feature) layer.

    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    n_classes: int = 10
    channels: tuple[int, int] = (32, 64)
    features: int = 128

    def __post_init__(self) -> None:
        c, h, w = self.image_shape
        if c not in (1, 3) or h % 4 or w % 4 or h < 4 or w < 4:
            raise ValueError(
                f"image_shape must be (C, H, W), C in (1, 3), H, W divisible by 4; "
                f"got {self.image_shape}"
            )
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainConfig:
    """Training settings of the classifier (Adam, cross-entropy).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: Adam step size.
        seed: seeds initial weights and shuffles.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: show tqdm progress bars.
        threads: torch CPU threads while training, or ``None`` to keep torch's setting.

    """

    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    threads: int | None = None


class Classifier(nn.Module):
    """Images ``(B, C, H, W)`` in [0, 1] to class logits; :meth:`features` gives the 128-d layer."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        c1, c2 = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), config.features),
            nn.ReLU(),
        )
        self.head = nn.Linear(config.features, config.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(B, features)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(B, n_classes)``."""
        return self.head(self.body(x))


@dataclass(frozen=True, kw_only=True)
class TrainedClassifier:
    """A trained classifier with its held-out accuracy.

    Attributes:
        model: the classifier, eval mode, CPU.
        test_accuracy: accuracy on the test split in [0, 1] (``nan`` without one).
        dataset: dataset name.
        seconds: training time.

    """

    model: Classifier
    test_accuracy: float
    dataset: str
    seconds: float = 0.0


def features_and_predictions(
    model: Classifier, images: np.ndarray, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features ``(n, F)`` float32 and predicted classes ``(n,)`` int64."""
    model.eval()
    device = next(model.parameters()).device
    feats, preds = [], []
    with torch.no_grad():
        for lo in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch_size])).to(device)
            f = model.features(x.float())
            feats.append(f.cpu().numpy())
            preds.append(model.head(f).argmax(dim=1).cpu().numpy())
    return np.concatenate(feats), np.concatenate(preds).astype(np.int64)


def classifier_accuracy(model: Classifier, data: ImageDataset) -> float:
    """Share of ``data`` (which must have labels) classified correctly."""
    if data.labels is None:
        raise ValueError(f"dataset {data.name!r} has no labels")
    _, preds = features_and_predictions(model, data.images)
    return float(np.mean(preds == data.labels))


def train_classifier(
    train: ImageDataset,
    config: ClassifierTrainConfig | None = None,
    *,
    test: ImageDataset | None = None,
) -> TrainedClassifier:
    """Train the evaluation classifier on ``train`` (labels required); score it on ``test``."""
    config = config or ClassifierTrainConfig()
    if train.labels is None:
        raise ValueError(f"dataset {train.name!r} has no labels to train a classifier on")
    arch = ClassifierConfig(image_shape=train.image_shape, n_classes=max(train.n_classes, 2))
    device = resolve_device(config.device)
    start = time.perf_counter()
    with cpu_threads(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Classifier(arch).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        images = torch.from_numpy(train.images).to(device)
        labels = torch.from_numpy(train.labels).to(device)
        for epoch in range(config.epochs):
            perm = np.random.default_rng([config.seed, epoch]).permutation(len(train))
            order = torch.from_numpy(perm)
            batches = order.split(config.batch_size)
            bar = tqdm(
                batches,
                desc=f"classifier epoch {epoch + 1}",
                disable=not config.progress,
                leave=False,
            )
            for idx in bar:
                idx = idx.to(device)
                loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model = model.cpu().eval()
        acc = classifier_accuracy(model, test) if test is not None else math.nan
    return TrainedClassifier(
        model=model, test_accuracy=acc, dataset=train.name, seconds=time.perf_counter() - start
    )


def save_classifier(path: str | os.PathLike[str], trained: TrainedClassifier) -> None:
    """Write one safetensors file with the config and test accuracy in its metadata."""
    meta = {
        "format": CLASSIFIER_FORMAT,
        "config": json.dumps(asdict(trained.model.config)),
        "test_accuracy": repr(trained.test_accuracy),
        "dataset": trained.dataset,
        "seconds": repr(trained.seconds),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_classifier(path: str | os.PathLike[str]) -> TrainedClassifier:
    """Load a file written by :func:`save_classifier`.

    Raises:
        ValueError: missing or corrupt file, or one of another format.

    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"classifier file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {CLASSIFIER_FORMAT!r}")
        raw = json.loads(meta["config"])
        known = {f.name for f in fields(ClassifierConfig)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known
        }
        config = ClassifierConfig(**values)
        model = Classifier(config)
        model.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, OSError, RuntimeError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid classifier file: {exc}") from exc
    return TrainedClassifier(
        model=model.eval(),
        test_accuracy=float(meta.get("test_accuracy", "nan")),
        dataset=meta.get("dataset", ""),
        seconds=float(meta.get("seconds", "0")),
    )
