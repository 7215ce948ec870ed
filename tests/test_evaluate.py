"""Metrics on synthetic data with known answers, and the evaluation classifier on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.classifier import (
    ClassifierTrainConfig,
    classifier_accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from models.datasets import load_digits_dataset
from models.evaluate import (
    METRIC_NOTE,
    class_histogram,
    evaluate_images,
    feature_frechet_distance,
    frechet_distance,
    kl_divergence,
    knn_radii,
    make_reference,
    nearest_neighbour_distances,
    precision_recall,
)


def test_frechet_closed_form_diagonal(rng: np.random.Generator) -> None:
    # For diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_rotation_invariant_and_zero_on_itself(rng: np.random.Generator) -> None:
    m = rng.normal(size=(4, 4))
    s1, s2 = m @ m.T + 0.1 * np.eye(4), np.diag([1.0, 2.0, 3.0, 4.0])
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    mu = rng.normal(size=4)
    base = frechet_distance(mu, s1, np.zeros(4), s2)
    rotated = frechet_distance(q @ mu, q @ s1 @ q.T, np.zeros(4), q @ s2 @ q.T)
    assert rotated == pytest.approx(base, rel=1e-9)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu, s1, np.zeros(3), s2)


def test_feature_frechet_matches_population_value(rng: np.random.Generator) -> None:
    real = rng.normal(size=(20000, 3))
    fake = rng.normal(size=(20000, 3)) * 2.0 + np.array([1.0, 0.0, 0.0])
    # Population value: |(1,0,0)|^2 + 3 (2 - 1)^2 = 4.
    assert feature_frechet_distance(real, fake) == pytest.approx(4.0, rel=0.05)


def test_precision_recall_identical_and_disjoint(rng: np.random.Generator) -> None:
    a = rng.normal(size=(500, 8)).astype(np.float32)
    b = rng.normal(size=(500, 8)).astype(np.float32)
    p, r = precision_recall(a, a, k=3)
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(a, b, k=3)
    assert p > 0.85 and r > 0.85
    p, r = precision_recall(a, b + 100.0, k=3)
    assert p == 0.0 and r == 0.0


def test_precision_recall_see_mode_collapse(rng: np.random.Generator) -> None:
    real = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 20.0])
    collapsed = rng.normal(size=(600, 2))  # only the first mode
    p, r = precision_recall(real.astype(np.float32), collapsed.astype(np.float32), k=3)
    assert p > 0.9
    assert 0.4 < r < 0.6


def test_knn_radii_on_a_line() -> None:
    points = np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32)
    np.testing.assert_allclose(knn_radii(points, 1), [1.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(knn_radii(points, 2), [3.0, 2.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(points, 4)


def test_histogram_and_kl() -> None:
    hist = class_histogram(np.array([0, 0, 1, 3]), 4)
    np.testing.assert_allclose(hist, [0.5, 0.25, 0.0, 0.25])
    uniform = np.full(4, 0.25)
    assert kl_divergence(uniform, uniform) == pytest.approx(0.0, abs=1e-12)
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert kl_divergence(p, uniform) == pytest.approx(np.log(2.0), rel=1e-12)
    assert np.isfinite(kl_divergence(uniform, p))
    with pytest.raises(ValueError, match="labels"):
        class_histogram(np.array([4]), 4)


def test_nearest_neighbour_distances(rng: np.random.Generator) -> None:
    train = rng.random((50, 1, 4, 4)).astype(np.float32)
    copies = train[[3, 7]]
    assert np.all(nearest_neighbour_distances(copies, train) < 1e-3)
    shifted = train[:1] + 0.5
    assert nearest_neighbour_distances(shifted, train)[0] > 0.5
    with pytest.raises(ValueError, match="image sizes differ"):
        nearest_neighbour_distances(train, train[:, :, :2])


def test_classifier_learns_digits_and_round_trips(tmp_path: Path) -> None:
    train = load_digits_dataset(split="train")
    test = load_digits_dataset(split="test")
    config = ClassifierTrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False, threads=1)
    trained = train_classifier(train, config, test=test)
    assert trained.test_accuracy > 0.85
    save_classifier(tmp_path / "clf.safetensors", trained)
    again = load_classifier(tmp_path / "clf.safetensors")
    assert again.test_accuracy == trained.test_accuracy and again.dataset == "digits"
    assert classifier_accuracy(again.model, test) == trained.test_accuracy
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a valid classifier"):
        load_classifier(tmp_path / "bad.safetensors")

    reference = make_reference(trained.model, test.images, train.images)
    real = evaluate_images(train.images[:359], trained.model, reference)
    blank = evaluate_images(np.zeros_like(test.images), trained.model, reference)
    assert real.classifier_fid < blank.classifier_fid
    assert real.class_kl < 0.05 < blank.class_kl
    assert real.nn_median == pytest.approx(0.0, abs=1e-5)  # training images are their own NN
    assert real.note == METRIC_NOTE and "NOT Inception" in real.to_dict()["note"]
