"""Image-quality metrics on the features of the project's own classifier (NOT Inception FID).

- **classifier FID**: the Frechet distance between Gaussians fitted to the penultimate
  features (128-d) of :class:`models.classifier.Classifier` on real and generated images. It
  is computed like FID but on a small CNN trained on the same dataset, so its values are not
  comparable with Inception FID numbers in papers; compare samplers with each other only.
- **precision / recall** (Kynkaanniemi et al. 2019, "Improved precision and recall"): the
  manifold of a point set is the union of balls around each point with radius its distance to
  its k-th nearest neighbour in the same set; precision is the share of generated points inside
  the real manifold, recall the share of real points inside the generated manifold.
- **class histogram / KL**: the classifier's predicted classes of generated images against
  those of real images, KL(generated || real): mode coverage.
- **nearest-training-neighbour distances** (pixel L2): how far samples are from the training
  images, against the same for real held-out images: near-zero distances flag copies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from models.classifier import Classifier, features_and_predictions

METRIC_NOTE = (
    "classifier FID = Frechet distance on penultimate features of a small CNN trained in the "
    "project on this dataset; NOT Inception FID, not comparable with published FIDs"
)
# Rows per distance block: 2048 x 10k float32 distances = 80 MB at most.
_BLOCK = 2048


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and covariance ``(F, F)`` (float64, ``ddof=1``) of features ``(n, F)``."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must have shape (n, F) with n >= 2, got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1^1/2 sigma2 sigma1^1/2)^1/2). The trace of
    the matrix square root is taken from the eigenvalues of the symmetric PSD matrix
    sigma1^1/2 sigma2 sigma1^1/2, which avoids the complex round-off of a general ``sqrtm``.

    Args:
        mu1: mean of the first Gaussian, shape ``(F,)``.
        sigma1: its covariance, shape ``(F, F)``, symmetric positive semi-definite.
        mu2: mean of the second Gaussian, shape ``(F,)``.
        sigma2: its covariance, shape ``(F, F)``.

    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes must be (F,), (F, F) for both: got {mu1.shape}, {s1.shape}, {mu2.shape}, "
            f"{s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    value = float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (s + s.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def feature_frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``(n, F)`` and ``(m, F)``."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(len(a), len(b))`` via the matmul expansion, float64-safe clip."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_(min=0.0).sqrt_()


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point (rows of ``(n, F)``) to its k-th nearest other point; ``(n,)``."""
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0] - 1}], got {k}")
    out = torch.empty(x.shape[0])
    for lo in range(0, x.shape[0], _BLOCK):
        d = _pairwise(x[lo : lo + _BLOCK], x)
        out[lo : lo + _BLOCK] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # 0: itself
    return out.numpy()


def manifold_coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` ``(m, F)`` inside at least one ball ``(centres (n, F), radii (n,))``."""
    p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    c = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    r = torch.from_numpy(np.ascontiguousarray(radii, dtype=np.float32))
    inside = 0
    for lo in range(0, p.shape[0], _BLOCK):
        inside += int((_pairwise(p[lo : lo + _BLOCK], c) <= r[None, :]).any(dim=1).sum())
    return inside / p.shape[0]


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall of ``fake`` ``(m, F)`` against ``real`` ``(n, F)``.

    Kynkaanniemi et al. (2019) use k = 3; use the same number of real and generated points,
    since the radii shrink as a set grows.

    Returns:
        ``(precision, recall)``, each in [0, 1].

    """
    real = np.asarray(real, np.float32)
    fake = np.asarray(fake, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (n, F) and (m, F), got {real.shape}, {fake.shape}")
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def class_histogram(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each class 0..n_classes-1 in integer ``labels`` ``(n,)``; sums to 1."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be non-empty and in [0, {n_classes}), got {labels[:5]}...")
    return np.bincount(labels, minlength=n_classes) / labels.size


def kl_divergence(p: np.ndarray, q: np.ndarray, *, eps: float = 1e-10) -> float:
    """KL(p || q) in nats for histograms ``(K,)``; ``q`` is floored at ``eps`` (no infinities)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    p, q = p / p.sum(), np.maximum(q / q.sum(), eps)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def nearest_neighbour_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pixel-space L2 distance of each query image to its nearest reference image.

    Args:
        queries: images ``(m, C, H, W)`` (or any ``(m, ...)``).
        reference: images ``(n, C, H, W)`` of the same per-image shape.

    Returns:
        Distances, shape ``(m,)``, float32.

    """
    q = np.ascontiguousarray(np.reshape(queries, (len(queries), -1)), dtype=np.float32)
    r = np.ascontiguousarray(np.reshape(reference, (len(reference), -1)), dtype=np.float32)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"image sizes differ: {q.shape[1]} vs {r.shape[1]} values")
    rt = torch.from_numpy(r)
    out = [
        _pairwise(torch.from_numpy(q[lo : lo + _BLOCK]), rt).min(dim=1).values
        for lo in range(0, q.shape[0], _BLOCK)
    ]
    return torch.cat(out).numpy()


@dataclass(frozen=True, kw_only=True)
class RealReference:
    """What generated images are compared with (computed once per dataset).

    Attributes:
        features: classifier features of real held-out images, ``(n, F)``.
        histogram: class shares of the classifier's predictions on them, ``(K,)``.
        train_images: training images for the nearest-neighbour check, ``(N, C, H, W)``.
        nn_median: median distance of real held-out images to their nearest training image
            (what "new, not a copy" looks like).

    """

    features: np.ndarray
    histogram: np.ndarray
    train_images: np.ndarray
    nn_median: float


@dataclass(frozen=True, kw_only=True)
class QualityReport:
    """Metrics of one set of generated (or reconstructed) images.

    Attributes:
        classifier_fid: Frechet distance on classifier features (NOT Inception FID).
        precision: k-NN precision in [0, 1].
        recall: k-NN recall in [0, 1].
        class_kl: KL(generated class histogram || real one), nats.
        class_histogram: generated class shares.
        nn_median: median pixel L2 distance to the nearest training image.
        nn_ratio: ``nn_median`` over the same for real held-out images (about 1: as new as real
            unseen images; near 0: copies of training images).
        n_samples: images evaluated.
        k: neighbours of the precision/recall manifolds.
        note: what "classifier FID" means.

    """

    classifier_fid: float
    precision: float
    recall: float
    class_kl: float
    class_histogram: tuple[float, ...]
    nn_median: float
    nn_ratio: float
    n_samples: int
    k: int
    note: str = METRIC_NOTE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def make_reference(
    classifier: Classifier,
    real_images: np.ndarray,
    train_images: np.ndarray,
    *,
    nn_queries: int = 1000,
) -> RealReference:
    """Summarise real held-out images ``(n, C, H, W)`` and training images for comparisons."""
    features, preds = features_and_predictions(classifier, real_images)
    n_classes = classifier.config.n_classes
    nn = nearest_neighbour_distances(real_images[:nn_queries], train_images)
    return RealReference(
        features=features,
        histogram=class_histogram(preds, n_classes),
        train_images=train_images,
        nn_median=float(np.median(nn)),
    )


def evaluate_images(
    images: np.ndarray,
    classifier: Classifier,
    reference: RealReference,
    *,
    k: int = 3,
    nn_queries: int = 1000,
) -> QualityReport:
    """All metrics of images ``(m, C, H, W)`` in [0, 1] against a :class:`RealReference`."""
    features, preds = features_and_predictions(classifier, images)
    hist = class_histogram(preds, classifier.config.n_classes)
    precision, recall = precision_recall(reference.features, features, k=k)
    nn = float(np.median(nearest_neighbour_distances(images[:nn_queries], reference.train_images)))
    return QualityReport(
        classifier_fid=feature_frechet_distance(reference.features, features),
        precision=precision,
        recall=recall,
        class_kl=kl_divergence(hist, reference.histogram),
        class_histogram=tuple(float(v) for v in hist),
        nn_median=nn,
        nn_ratio=nn / reference.nn_median if reference.nn_median > 0 else math.nan,
        n_samples=int(images.shape[0]),
        k=k,
    )
