"""Dataset loaders: real IDX test files, corrupt files, digits, arrays and image folders."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.datasets import (
    DatasetConfig,
    ImageDataset,
    find_idx_directory,
    load_array_file,
    load_dataset,
    load_digits_dataset,
    load_idx_dataset,
    load_image_folder,
    read_idx,
)

# The MNIST and Fashion-MNIST IDX files: $AEOT_TEST_DATA, else the `shared/data` folder beside
# the repository (where CI lays it). Under CI=true a missing folder fails the test.
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AEOT_TEST_DATA") or ROOT.parent / "shared" / "data")
# MD5 of the uncompressed t10k files (as published with the data sets).
T10K_MD5 = {
    "mnist": ("2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
    "fashion-mnist": ("8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
}


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1" if code == 0x08 else array.dtype).tobytes()


def write_idx_dir(directory: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_t10k_files_parse_with_known_md5(name: str) -> None:
    directory = DATA / name
    if not directory.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {directory} is missing (set AEOT_TEST_DATA to the data)")
        pytest.skip(f"{directory} not present (set AEOT_TEST_DATA to the data)")
    for stem, md5 in zip(
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), T10K_MD5[name], strict=True
    ):
        raw = gzip.decompress((directory / f"{stem}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5
    data = load_idx_dataset(directory, split="test")
    assert data.images.shape == (10000, 1, 28, 28)
    assert data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() == 1.0
    assert data.labels.shape == (10000,) and data.labels.dtype == np.int64
    assert set(np.unique(data.labels)) == set(range(10))
    assert data.name == name
    if name == "fashion-mnist":  # known by its folder's name
        assert data.class_names is not None and len(data.class_names) == 10
        assert (data.class_names[0], data.class_names[9]) == ("T-shirt/top", "Ankle boot")
    else:  # MNIST's labels are the digits themselves
        assert data.class_names is None


def test_idx_roundtrip_gzipped_and_plain(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, size=(5, 4, 6), dtype=np.uint8)
    labels = np.array([0, 3, 9, 1, 1], dtype=np.uint8)
    for gz in (True, False):
        directory = tmp_path / f"gz{gz}"
        write_idx_dir(directory, images, labels, gz=gz)
        data = load_idx_dataset(directory, split="test", name="toy")
        np.testing.assert_allclose(data.images[:, 0], images / 255.0, atol=1e-7)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.image_shape == (1, 4, 6)


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "x").write_bytes(idx_bytes(arr, code=0x0C))
    out = read_idx(tmp_path / "x")
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.int32


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "magic"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00", "longer"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b"", "truncated"),
    ],
)
def test_corrupt_idx_file_raises(tmp_path: Path, mutate, message: str) -> None:
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_bad_gzip_raises(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4), np.uint8)))[:-10])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def test_label_count_mismatch_and_wrong_shapes(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "a", np.zeros((4, 3, 3), np.uint8), np.zeros(3, np.uint8), gz=True)
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        load_idx_dataset(tmp_path / "a", split="test")
    write_idx_dir(tmp_path / "b", np.zeros((4, 9), np.uint8), np.zeros(4, np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        load_idx_dataset(tmp_path / "b", split="test")


def test_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no t10k-images"):
        load_idx_dataset(tmp_path, split="test")
    with pytest.raises(ValueError, match="does not exist"):
        read_idx(tmp_path / "nope")
    with pytest.raises(ValueError, match="not found"):
        find_idx_directory("mnist", roots=(str(tmp_path),))


def test_digits_splits_are_disjoint_and_cover_all() -> None:
    full = load_digits_dataset(split="all")
    train, test = load_digits_dataset(split="train"), load_digits_dataset(split="test")
    assert full.images.shape == (1797, 1, 8, 8)
    assert len(train) + len(test) == len(full)
    assert full.images.min() == 0.0 and full.images.max() == 1.0
    assert full.n_classes == 10
    joined = np.concatenate([train.images, test.images]).reshape(len(full), -1)
    assert len(np.unique(joined, axis=0)) == len(
        np.unique(full.images.reshape(len(full), -1), axis=0)
    )


def test_array_files_layouts_and_resize(tmp_path: Path, rng: np.random.Generator) -> None:
    nhwc = rng.integers(0, 256, size=(4, 10, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=nhwc, labels=np.array([0, 1, 2, 1]))
    data = load_array_file(tmp_path / "rgb.npz")
    assert data.images.shape == (4, 3, 10, 12)
    np.testing.assert_allclose(data.images, nhwc.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    assert data.labels.tolist() == [0, 1, 2, 1] and data.name == "rgb"
    gray = load_array_file(tmp_path / "rgb.npz", image_size=(8, 8), channels=1)
    assert gray.images.shape == (4, 1, 8, 8)
    assert 0.0 <= gray.images.min() and gray.images.max() <= 1.0
    np.save(tmp_path / "plain.npy", rng.random((3, 8, 8)).astype(np.float32))
    plain = load_dataset(
        DatasetConfig(source="arrays", path=str(tmp_path / "plain.npy"), channels=3)
    )
    assert plain.images.shape == (3, 3, 8, 8) and plain.labels is None


def test_array_file_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.full((2, 4, 4), 2.0))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        load_array_file(tmp_path / "bad.npy")
    np.savez(tmp_path / "nokey.npz", pictures=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no array named"):
        load_array_file(tmp_path / "nokey.npz")
    np.savez(tmp_path / "count.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        load_array_file(tmp_path / "count.npz")
    np.save(tmp_path / "shape.npy", np.zeros((2, 5, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="expected images"):
        load_array_file(tmp_path / "shape.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a readable"):
        load_array_file(tmp_path / "junk.npy")


def test_image_folder_with_classes(tmp_path: Path, rng: np.random.Generator) -> None:
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(2 + k):
            pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    data = load_image_folder(tmp_path, image_size=(16, 16), channels=3, name="pets")
    assert data.images.shape == (5, 3, 16, 16)
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    assert data.class_names == ("cat", "dog")  # the sub-folders name the classes
    renamed = load_dataset(
        DatasetConfig(
            source="folder", path=str(tmp_path), image_size=(8, 8), class_names=("c", "d")
        )
    )
    assert renamed.class_names == ("c", "d")
    gray = load_dataset(
        DatasetConfig(source="folder", path=str(tmp_path / "dog"), image_size=(8, 12))
    )
    assert gray.images.shape == (3, 1, 8, 12) and gray.labels is None


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path, image_size=None)
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path, image_size=(8, 8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image_folder(tmp_path, image_size=(8, 8))


def test_dataset_validation_and_subset(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="float32"):
        ImageDataset(images=np.zeros((2, 1, 4, 4)), labels=None, name="x")
    with pytest.raises(ValueError, match="labels must have shape"):
        ImageDataset(
            images=np.zeros((2, 1, 4, 4), np.float32), labels=np.zeros(3, np.int64), name="x"
        )
    with pytest.raises(ValueError, match="needs a path"):
        DatasetConfig(source="idx")
    data = ImageDataset(
        images=rng.random((10, 1, 2, 2)).astype(np.float32),
        labels=np.arange(10, dtype=np.int64),
        name="x",
    )
    sub = data.subset(4, seed=3)
    assert len(sub) == 4 and np.array_equal(sub.labels, data.subset(4, seed=3).labels)
    assert data.subset(50) is data


def test_class_names_name_every_label_and_need_labels(rng: np.random.Generator) -> None:
    images = rng.random((4, 1, 2, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 1], np.int64)
    named = ImageDataset(images=images, labels=labels, name="x", class_names=("a", "b", "c"))
    assert named.take(np.array([1, 3])).class_names == ("a", "b", "c")  # kept by subsets
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        ImageDataset(images=images, labels=labels, name="x", class_names=("a", "b"))
    with pytest.raises(ValueError, match="class names but no labels"):
        ImageDataset(images=images, labels=None, name="x", class_names=("a",))
    for bad in ((), ("a", ""), ("x" * 65,)):
        with pytest.raises(ValueError, match="class_names must be"):
            DatasetConfig(class_names=bad)
    config = DatasetConfig(class_names=("a", "b"))
    assert DatasetConfig.from_dict(config.to_dict()) == config  # JSON lists back to tuples
