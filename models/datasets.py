"""Image datasets as arrays: IDX files (MNIST, Fashion-MNIST), scikit-learn digits, user data.

Every loader returns an :class:`ImageDataset`: images float32 in [0, 1] of shape
``(N, C, H, W)``, integer labels or ``None``, and a name. Files are validated at this boundary:
a missing, truncated or inconsistent file raises ``ValueError`` naming the file and the problem.

Sources:

- IDX (the format of MNIST and Fashion-MNIST): ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` in one
  directory, each gzipped (``.gz``) or not. Debian's ``dataset-fashion-mnist`` package installs
  Fashion-MNIST under ``/usr/share/datasets/fashion-mnist``.
- scikit-learn's bundled ``load_digits`` (1797 images of 8x8): the embedded default, no files.
- ``.npy`` / ``.npz`` arrays and folders of image files (any size, resized to a configured size,
  grayscale or RGB), so CIFAR-10- or CelebA-style data can be used.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from models.options import (
    MAX_CLASS_NAME,
    MAX_CLASSES,
    DataOptions,
    Split,
    check_class_names,
    pick,
    values_of,
)

Source = Literal["digits", "idx", "arrays", "folder"]

# IDX type codes (third byte of the magic number) and their big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
# Where IDX datasets usually live, tried in order by :func:`find_idx_directory`.
DEFAULT_IDX_ROOTS = ("data", "~/.cache/aeot/datasets", "/usr/share/datasets")
# Image folders without an explicit size are resized to MNIST's 28 x 28 (conv-friendly: 4 | 28).
_FOLDER_DEFAULT_SIZE = (28, 28)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
# The digits data set has no official split: a fixed permutation keeps 20 % for testing.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
# Class names of IDX data sets known by their folder's name (spelled without "-" or "_").
KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashionmnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}


def known_class_names(name: str) -> tuple[str, ...] | None:
    """The class names of a well-known IDX data set by its name (``"fashion-mnist"``), or None."""
    return KNOWN_CLASS_NAMES.get(name.lower().replace("-", "").replace("_", ""))


@dataclass(frozen=True, kw_only=True)
class ImageDataset:
    """Images with optional labels.

    Attributes:
        images: shape ``(N, C, H, W)``, float32, values in [0, 1].
        labels: shape ``(N,)``, int64, or ``None``.
        name: short name used in bundles and reports (``"mnist"``, ``"digits"``, ...).
        class_names: the name of each label, label 0 first (at least ``n_classes`` of them),
            or ``None``.

    """

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != np.float32:
            raise ValueError(
                f"images must be a float32 array of shape (N, C, H, W), got "
                f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"dataset {self.name!r} is empty")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
        if self.labels is not None:
            if self.labels.shape != (x.shape[0],):
                raise ValueError(f"labels must have shape ({x.shape[0]},), got {self.labels.shape}")
            if self.labels.dtype != np.int64:
                raise ValueError(f"labels must be int64, got {self.labels.dtype}")
        if self.class_names is not None:
            check_class_names(self.class_names)
            if self.labels is None:
                raise ValueError(f"dataset {self.name!r} has class names but no labels")
            if len(self.class_names) < self.n_classes:
                raise ValueError(
                    f"dataset {self.name!r} has {self.n_classes} classes but "
                    f"{len(self.class_names)} class names"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def n_classes(self) -> int:
        """Number of classes (``max(label) + 1``), 0 without labels."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def take(self, indices: np.ndarray) -> ImageDataset:
        """Return the rows ``indices`` (shape ``(n,)``, int) as a new dataset."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return replace(self, images=self.images[idx], labels=labels)

    def subset(self, n: int, seed: int = 0) -> ImageDataset:
        """Return a seeded random subset of ``n`` rows (all rows, in order, if ``n >= len``)."""
        if n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.take(idx)


@dataclass(frozen=True, kw_only=True)
class DatasetConfig(DataOptions):
    """Which data to load; :func:`load_dataset` turns it into an :class:`ImageDataset`.

    Attributes:
        source: ``"digits"`` (scikit-learn, no files), ``"idx"`` (a directory of IDX files),
            ``"arrays"`` (a ``.npy``/``.npz`` file) or ``"folder"`` (a folder of image files).
        path: file or directory for the file-based sources.
        split: ``"train"``, ``"test"`` or ``"all"`` (IDX and digits; ignored by user data).
        name: dataset name; defaults to the directory / file name (``"digits"`` for digits).
        image_size: ``(H, W)`` to resize user data to; required for folders of images.
        channels: 1 (grayscale) or 3 (RGB) for user data; ``None`` keeps the data's own.
        class_names: names of the labels, label 0 first; ``None`` keeps the data's own (an
            image folder's sub-folder names, Fashion-MNIST's ten).
        limit: keep only the first ``limit`` images (``None``: all).

    The user-facing options (split, image_size, channels, class_names) are declared in
    :class:`models.options.DataOptions`.
    """

    source: Source = "digits"
    path: str | None = None
    name: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("digits", "idx", "arrays", "folder"):
            raise ValueError(f"unknown dataset source {self.source!r}")
        if self.source != "digits" and not self.path:
            raise ValueError(f"dataset source {self.source!r} needs a path")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")

    @property
    def title(self) -> str:
        """What to call the data: its name, else its source (``"digits"``)."""
        return self.name or self.source

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``image_size`` as a list), inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["image_size"] = None if self.image_size is None else list(self.image_size)
        data["class_names"] = None if self.class_names is None else list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetConfig:
        """Build from :meth:`to_dict`'s output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown dataset config keys {sorted(unknown)}")
        return cls(**{**data, **pick(DataOptions, data)})


def detect_source(path: str | Path) -> Source:
    """Tell which loader reads ``path``: an IDX directory, an array file or an image folder.

    Raises:
        ValueError: the path does not exist or holds none of the supported layouts.

    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix in (".npy", ".npz"):
            return "arrays"
        raise ValueError(f"{path} is a file but not .npy or .npz")
    if not path.is_dir():
        raise ValueError(f"dataset {path} does not exist")
    try:
        find_idx_file(path, "train-images-idx3-ubyte")
        return "idx"
    except ValueError:
        pass
    try:
        find_idx_file(path, "t10k-images-idx3-ubyte")
        return "idx"
    except ValueError:
        pass
    images = any(
        p.suffix.lower() in _IMAGE_SUFFIXES
        for d in (path, *(c for c in path.iterdir() if c.is_dir()))
        for p in d.iterdir()
    )
    if images:
        return "folder"
    raise ValueError(
        f"{path} holds no IDX files (train-images-idx3-ubyte[.gz]), no .npy/.npz and no images"
    )


def dataset_config_for(
    spec: str,
    options: DataOptions | None = None,
    *,
    roots: tuple[str, ...] = DEFAULT_IDX_ROOTS,
) -> DatasetConfig:
    """Turn what a user types into a :class:`DatasetConfig`.

    Args:
        spec: ``"digits"`` (scikit-learn, no files), a path (IDX directory, ``.npy``/``.npz``
            file or image folder), or the name of an IDX data set under one of ``roots``
            (``"mnist"``, ``"fashion-mnist"``; Debian's ``dataset-fashion-mnist`` installs one
            under ``/usr/share/datasets``).
        options: split (IDX directories with only the t10k files fall back to ``"test"``),
            image size (image folders default to 28 x 28), channels (``None`` keeps arrays'
            own, gray for folders) and class names (``None``: the data's own).
        roots: parent folders searched for a named IDX data set.

    Raises:
        ValueError: nothing readable at ``spec``; the message lists what was tried.

    """
    options = options or DataOptions()
    values = values_of(options, DataOptions)
    if spec == "digits":
        return DatasetConfig(source="digits", **values)
    path = Path(spec).expanduser()
    if not path.exists() and "/" not in spec:
        try:
            path = find_idx_directory(spec, roots)
        except ValueError as exc:
            raise ValueError(
                f"dataset {spec!r} is neither a path nor an IDX data set under {list(roots)}"
            ) from exc
    source = detect_source(path)
    name = path.stem if source == "arrays" else path.resolve().name
    if source == "idx" and options.split != "test":
        try:
            find_idx_file(path, "train-images-idx3-ubyte")
        except ValueError:
            values["split"] = "test"
    if source == "folder" and options.image_size is None:
        values["image_size"] = _FOLDER_DEFAULT_SIZE
    return DatasetConfig(source=source, path=str(path), name=name, **values)


def load_dataset(config: DatasetConfig) -> ImageDataset:
    """Load the data a :class:`DatasetConfig` describes."""
    path = config.path or ""  # DatasetConfig requires a path for every file-based source
    if config.source == "digits":
        data = load_digits_dataset(split=config.split)
    elif config.source == "idx":
        data = load_idx_dataset(path, split=config.split, name=config.name)
    elif config.source == "arrays":
        data = load_array_file(
            path, image_size=config.image_size, channels=config.channels, name=config.name
        )
    else:
        data = load_image_folder(
            path,
            image_size=config.image_size,
            channels=config.channels or 1,
            name=config.name,
        )
    if config.class_names is not None:
        data = replace(data, class_names=config.class_names)
    if config.limit is not None and config.limit < len(data):
        data = data.take(np.arange(config.limit))
    return data


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its own shape and dtype.

    Raises:
        ValueError: missing file, bad gzip stream, bad magic number, or a data length that
            does not match the header's dimensions (truncated or trailing bytes).

    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file {path} does not exist")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a valid gzip file: {exc}") from exc
    if len(raw) < 4:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, no IDX header")
    zero, code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(f"{path} has bad IDX magic number 0x{raw[:4].hex()}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its header ({len(raw)} bytes)")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {state}: header dims {dims} need {expected} data bytes, "
            f"found {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def find_idx_file(directory: str | Path, stem: str) -> Path:
    """Find ``stem`` (like ``t10k-images-idx3-ubyte``) in ``directory``, gzipped or not.

    Also accepts the dotted spelling some mirrors use (``t10k-images.idx3-ubyte``).
    """
    directory = Path(directory).expanduser()
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise ValueError(f"no {stem}[.gz] in {directory}")


def find_idx_directory(name: str, roots: tuple[str, ...] = DEFAULT_IDX_ROOTS) -> Path:
    """Return the first ``root/name`` that holds ``train-images-idx3-ubyte[.gz]``.

    Args:
        name: data set folder name, e.g. ``"mnist"`` or ``"fashion-mnist"``.
        roots: parent folders to try in order.

    """
    for root in roots:
        candidate = Path(root).expanduser() / name
        try:
            find_idx_file(candidate, "train-images-idx3-ubyte")
        except ValueError:
            continue
        return candidate
    raise ValueError(f"IDX data set {name!r} not found under any of {list(roots)}")


def load_idx_dataset(
    directory: str | Path, *, split: Split = "train", name: str | None = None
) -> ImageDataset:
    """Load an MNIST-style IDX split from ``directory``.

    Args:
        directory: holds ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``"train"`` (60k for MNIST), ``"test"`` (the t10k files) or ``"all"`` (both).
        name: dataset name; defaults to the directory's name.

    Returns:
        Images ``(N, 1, H, W)`` in [0, 1] and labels ``(N,)`` int64.

    """
    directory = Path(directory).expanduser()
    name = name or directory.name
    if split == "all":
        parts = [load_idx_dataset(directory, split=s, name=name) for s in ("train", "test")]
        return ImageDataset(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            name=name,
            class_names=parts[0].class_names,
        )
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    prefix = _IDX_PREFIX[split]
    images_path = find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path} must hold uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{labels_path} must hold uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{images_path.name} has {images.shape[0]} images but {labels_path.name} has "
            f"{labels.shape[0]} labels"
        )
    labels = labels.astype(np.int64)
    names = known_class_names(name)
    return ImageDataset(
        images=(images[:, None].astype(np.float32) / 255.0),
        labels=labels,
        name=name,
        class_names=names if names is not None and len(names) > labels.max() else None,
    )


# ----------------------------------------------------------------------------- digits


def load_digits_dataset(*, split: Split = "all") -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes); needs no files.

    Args:
        split: ``"all"`` (1797), or a fixed seeded 80/20 split: ``"train"`` (1438) or
            ``"test"`` (359).

    Returns:
        Images ``(N, 1, 8, 8)`` scaled from 0..16 to [0, 1], labels ``(N,)`` int64.

    """
    from sklearn.datasets import load_digits  # sklearn import is slow

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = bunch.target.astype(np.int64)
    if split != "all":
        order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
        n_test = round(_DIGITS_TEST_FRACTION * len(labels))
        idx = np.sort(order[n_test:] if split == "train" else order[:n_test])
        images, labels = images[idx], labels[idx]
    return ImageDataset(images=images, labels=labels, name="digits")


# ----------------------------------------------------------------------------- user data


def load_array_file(
    path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    name: str | None = None,
) -> ImageDataset:
    """Load images (and labels) from a ``.npy`` or ``.npz`` file.

    Accepted image layouts: ``(N, H, W)``, ``(N, H, W, C)`` (channels last, C in 1 or 3) and
    ``(N, C, H, W)``; uint8 (0..255) or float in [0, 1]. A ``.npz`` holds the images under
    ``images`` (or ``x``) and optional labels under ``labels`` (or ``y``).

    Args:
        path: the file.
        image_size: ``(H, W)`` to resize to (bilinear with antialiasing), or ``None``.
        channels: 1 or 3 to convert to (luminance / repeated gray), or ``None`` to keep.
        name: dataset name; defaults to the file's stem.

    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"array file {path} does not exist")
    labels = None
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        # numpy takes a file without a .npy/.npz header for a pickle, which is never loaded
        reason = "it has no .npy or .npz header" if "pickle" in str(exc) else str(exc)
        raise ValueError(f"{path} is not a readable .npy/.npz file: {reason}") from exc
    if isinstance(loaded, np.ndarray):
        images = loaded
    else:
        with loaded:
            images = _pick(loaded, ("images", "x"), path, required=True)
            labels = _pick(loaded, ("labels", "y"), path, required=False)
    images = to_nchw_unit(np.asarray(images), source=str(path))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: labels must be integers of shape ({images.shape[0]},), got "
                f"{labels.dtype} {labels.shape}"
            )
        if (labels < 0).any():
            raise ValueError(f"{path}: labels must be >= 0, got min {int(labels.min())}")
        labels = labels.astype(np.int64)
    images = convert_images(images, image_size=image_size, channels=channels)
    return ImageDataset(images=images, labels=labels, name=name or path.stem)


def _pick(archive: np.lib.npyio.NpzFile, keys: tuple[str, ...], path: Path, *, required: bool):
    for key in keys:
        if key in archive.files:
            return archive[key]
    if required:
        raise ValueError(f"{path} has no array named any of {list(keys)}; found {archive.files}")
    return None


def to_nchw_unit(images: np.ndarray, *, source: str = "images") -> np.ndarray:
    """Bring images to float32 ``(N, C, H, W)`` in [0, 1] from common layouts (see above)."""
    x = images
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(
            f"{source}: expected images (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
            f"(1, 3), got shape {images.shape}"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{source}: images must be uint8 or float, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(f"{source}: float images must be finite, got {bad:,} NaN or inf values")
    if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(
            f"{source}: float images must be in [0, 1], got range [{x.min()}, {x.max()}]"
        )
    return x


def convert_images(
    images: np.ndarray, *, image_size: tuple[int, int] | None, channels: int | None
) -> np.ndarray:
    """Resize (bilinear, antialiased) and convert channels of ``(N, C, H, W)`` images in [0, 1].

    RGB to gray uses the ITU-R 601 luma weights (as PIL's ``convert("L")``).
    """
    x = images
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    if channels == 1 and x.shape[1] == 3:
        x = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), x, axes=([0], [1]))
        x = x[:, None]
    elif channels == 3 and x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    if image_size is not None and tuple(x.shape[2:]) != tuple(image_size):
        t = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(x)),
            size=tuple(image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        x = t.clamp_(0.0, 1.0).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def load_image_folder(
    directory: str | Path,
    *,
    image_size: tuple[int, int] | None,
    channels: int = 1,
    name: str | None = None,
) -> ImageDataset:
    """Load a folder of image files, resized to ``image_size``.

    With sub-folders (``root/<class>/<image>``, the usual classification layout) the sorted
    sub-folder names become labels 0..K-1 and the class names; with image files directly in
    ``directory`` there are no labels. Files are read in sorted order, so the result is
    reproducible.

    Args:
        directory: the folder.
        image_size: ``(H, W)``; required, since files may differ in size.
        channels: 1 (grayscale) or 3 (RGB).
        name: dataset name; defaults to the folder's name.

    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ValueError(f"image folder {directory} does not exist")
    if image_size is None or len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image folders need image_size=(H, W), got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    classes = sorted(p for p in directory.iterdir() if p.is_dir())
    if classes:
        files = [(f, k) for k, c in enumerate(classes) for f in _image_files(c)]
    else:
        files = [(f, -1) for f in _image_files(directory)]
    if not files:
        raise ValueError(f"no image files ({sorted(_IMAGE_SUFFIXES)}) in {directory}")
    mode = "L" if channels == 1 else "RGB"
    height, width = image_size
    out = np.empty((len(files), channels, height, width), dtype=np.float32)
    for i, (file, _) in enumerate(files):
        try:
            with Image.open(file) as img:
                arr = np.asarray(
                    img.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
                )
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{file} is not a readable image: {exc}") from exc
        out[i] = (arr.reshape(height, width, channels).transpose(2, 0, 1)) / np.float32(255.0)
    labels = np.array([k for _, k in files], dtype=np.int64) if classes else None
    # Sub-folder names are the class names (cut to the longest a name may be).
    names = (
        tuple(c.name[:MAX_CLASS_NAME] for c in classes) if 0 < len(classes) <= MAX_CLASSES else None
    )
    return ImageDataset(images=out, labels=labels, name=name or directory.name, class_names=names)


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
