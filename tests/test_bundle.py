"""Model bundles: round trip, decoding, atomic replacement and corrupt bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.autoencoder import AutoencoderConfig, build_autoencoder
from models.bundle import TrainMetrics, load_bundle, save_bundle
from models.datasets import load_digits_dataset
from models.train import TrainConfig, train_and_save

MLP = AutoencoderConfig(arch="mlp", image_shape=(1, 8, 8), latent_dim=4, mlp_hidden=(32, 16))
TINY = TrainConfig(
    max_joint_epochs=2, decoder_epochs=1, batch_size=32, patience=5, progress=False, threads=1
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    data = load_digits_dataset(split="all").subset(96, seed=1)
    path = tmp_path_factory.mktemp("bundles") / "digits"
    return data, train_and_save(data, MLP, TINY, path)


@pytest.fixture
def bundle_copy(trained, tmp_path: Path) -> Path:
    _, bundle = trained
    return Path(shutil.copytree(bundle.path, tmp_path / "copy"))


def test_round_trip(trained) -> None:
    data, bundle = trained
    again = load_bundle(bundle.path)
    assert again.config == bundle.config
    assert again.config.latent_dim == 4 and again.config.image_shape == (1, 8, 8)
    assert again.config.dataset == "digits" and again.config.n_latents == 96
    np.testing.assert_array_equal(again.latents, bundle.latents)
    np.testing.assert_array_equal(again.labels, data.labels)
    assert isinstance(again.metrics, TrainMetrics)
    assert again.metrics.joint_epochs == 2 and again.metrics.n_train == 96
    assert len(again.metrics.history) == 3
    files = {p.name for p in bundle.path.iterdir()}
    assert files == {
        "config.json",
        "encoder.safetensors",
        "decoder.safetensors",
        "latents.npy",
        "labels.npy",
        "metrics.json",
    }
    assert json.loads((bundle.path / "config.json").read_text())["latent_dim"] == 4


def test_decode_matches_trained_decoder_and_encode_gives_latents(trained) -> None:
    data, bundle = trained
    z = bundle.latents[:10]
    with torch.no_grad():
        expected = bundle.model.decoder.eval()(torch.from_numpy(np.array(z))).numpy()
    images = bundle.decode(z)
    assert images.shape == (10, 1, 8, 8) and images.dtype == np.float32
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_allclose(bundle.encode(data.images), bundle.latents, rtol=1e-5, atol=1e-5)
    l2 = float(np.mean(np.square(bundle.decode(bundle.latents) - data.images)))
    assert l2 == pytest.approx(bundle.metrics.l2_after_freeze, rel=1e-4)
    assert bundle.decode(np.zeros((0, 4))).shape == (0, 1, 8, 8)


def test_decode_rejects_bad_latents(trained) -> None:
    _, bundle = trained
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        bundle.decode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        bundle.decode(np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="images must have shape"):
        bundle.encode(np.zeros((2, 1, 28, 28)))


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    model = build_autoencoder(MLP, seed=0)
    path = tmp_path / "b"
    save_bundle(path, model=model, latents=np.zeros((5, 4)), dataset="a")
    save_bundle(path, model=model, latents=np.ones((6, 4)), dataset="b")
    assert load_bundle(path).config.n_latents == 6
    assert load_bundle(path).labels is None and load_bundle(path).metrics is None
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    with pytest.raises(ValueError, match="already exists"):
        save_bundle(path, model=model, latents=np.zeros((5, 4)), dataset="a", overwrite=False)
    with pytest.raises(ValueError, match="latents must have shape"):
        save_bundle(tmp_path / "c", model=model, latents=np.zeros((5, 3)), dataset="a")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "decoder.safetensors").unlink(), "missing"),
        (lambda p: (p / "config.json").write_text("{not json"), "not a valid bundle config"),
        (lambda p: (p / "config.json").write_text('{"format": "other/9"}'), "format"),
        (lambda p: (p / "encoder.safetensors").write_bytes(b"junk" * 8), "does not hold weights"),
        (lambda p: np.save(p / "latents.npy", np.zeros((3, 4), np.float32)), "latents.npy"),
        (lambda p: np.save(p / "labels.npy", np.zeros(7, np.int64)), "labels.npy"),
        (lambda p: (p / "latents.npy").write_bytes(b"junk"), "not a readable"),
        (lambda p: (p / "metrics.json").write_text("[1, 2"), "metrics.json"),
    ],
)
def test_corrupt_bundle_raises(bundle_copy: Path, damage, message: str) -> None:
    damage(bundle_copy)
    with pytest.raises(ValueError, match=message):
        load_bundle(bundle_copy)


def test_wrong_architecture_weights_raise(bundle_copy: Path) -> None:
    config = json.loads((bundle_copy / "config.json").read_text())
    config["autoencoder"]["mlp_hidden"] = [64, 16]
    (bundle_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not hold weights"):
        load_bundle(bundle_copy)


def test_missing_bundle_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_class_names_travel_with_the_labels_and_old_bundles_have_none(tmp_path: Path) -> None:
    model = build_autoencoder(MLP, seed=0)
    labels = np.array([0, 1, 1, 2, 0])
    names = ("cat", "dog", "bird")
    path = save_bundle(
        tmp_path / "b",
        model=model,
        latents=np.zeros((5, 4)),
        labels=labels,
        class_names=names,
        dataset="pets",
    )
    assert load_bundle(path).config.class_names == names
    config = json.loads((path / "config.json").read_text())
    assert config["class_names"] == list(names)
    del config["class_names"]  # a bundle written before names existed
    (path / "config.json").write_text(json.dumps(config))
    assert load_bundle(path).config.class_names is None
    for bad, message in (
        (["cat", "dog"], "labels run from 0 to 2 but the bundle names 2 classes"),
        (["cat", "x" * 65, "bird"], "class_names must be names of 1 to 64 characters"),
        ("cat", "class_names must be a non-empty list"),
    ):
        (path / "config.json").write_text(json.dumps({**config, "class_names": bad}))
        with pytest.raises(ValueError, match=message):
            load_bundle(path)
    with pytest.raises(ValueError, match="class_names need labels"):
        save_bundle(
            tmp_path / "c", model=model, latents=np.zeros((5, 4)), class_names=names, dataset="x"
        )
