"""Model bundles: everything the service and the solver need from a trained autoencoder.

A bundle is a directory::

    config.json          format tag, autoencoder architecture, dataset name, image shape, d,
                         class names (only when known)
    encoder.safetensors  encoder weights (and BatchNorm statistics)
    decoder.safetensors  decoder weights (and BatchNorm statistics)
    latents.npy          training-set latents, shape (N, d), float32 (the OT targets)
    labels.npy           training-set labels, shape (N,), int64 (only when the data had labels)
    metrics.json         training metrics: L2 before/after freezing, epochs, time, device

Loading needs only this module and ``models.autoencoder`` (no training code). Bundles are
written into a temporary sibling directory and renamed into place, so a reader never sees a
half-written bundle.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.options import check_class_names

BUNDLE_FORMAT = "aeot-bundle/1"
# Rows per forward pass when encoding/decoding arrays: bounds memory, keeps BLAS calls large.
DEFAULT_BATCH = 1024
_REQUIRED = ("config.json", "encoder.safetensors", "decoder.safetensors", "latents.npy")
# Parameters a loaded autoencoder may have: the MNIST conv model has about 13 M; a config
# asking for more is refused before any weight tensor is allocated.
MAX_PARAMETERS = 200_000_000
# Hidden layers an MLP config may list (each one is a module built before weights load).
_MAX_LAYERS = 32
# config.json is under 1 KB and metrics.json about 100 bytes per epoch: a larger file is not
# read (parsed JSON takes ~10x its size in memory).
MAX_JSON_BYTES = 1 << 20
# Bytes of a .npy header read at most (numpy's own default bound).
_MAX_NPY_HEADER = 10_000


@dataclass(frozen=True, kw_only=True)
class EpochRecord:
    """One training epoch.

    Attributes:
        epoch: 1-based epoch number over both phases.
        phase: ``"joint"`` (encoder and decoder) or ``"decoder"`` (encoder frozen).
        loss: mean training L2 (MSE per pixel) over the epoch's batches, in train mode.
        seconds: wall time of the epoch.

    """

    epoch: int
    phase: str
    loss: float
    seconds: float


@dataclass(frozen=True, kw_only=True)
class TrainMetrics:
    """What ``metrics.json`` holds.

    Attributes:
        l2_before_freeze: MSE per pixel over the training set when the encoder was frozen
            (eval mode).
        l2_after_freeze: MSE per pixel over the training set after the decoder-only phase.
        joint_epochs: epochs with the encoder training.
        decoder_epochs: epochs after freezing the encoder.
        freeze_reason: ``"plateau"`` (loss stopped falling) or ``"max_joint_epochs"``.
        seconds: total training time.
        device: torch device used (``"cpu"``, ``"cuda"``).
        n_train: training images.
        history: one record per epoch.

    """

    l2_before_freeze: float
    l2_after_freeze: float
    joint_epochs: int
    decoder_epochs: int
    freeze_reason: str
    seconds: float
    device: str
    n_train: int
    history: tuple[EpochRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainMetrics:
        """Inverse of :meth:`to_dict`."""
        history = tuple(EpochRecord(**r) for r in data.get("history", ()))
        return cls(**{**data, "history": history})


@dataclass(frozen=True, kw_only=True)
class BundleConfig:
    """What ``config.json`` holds.

    Attributes:
        autoencoder: the architecture.
        dataset: dataset name.
        n_latents: N, rows of ``latents.npy``.
        has_labels: whether ``labels.npy`` exists.
        class_names: the name of each label, label 0 first, or ``None`` (bundles written
            before names existed, and data without them).

    """

    autoencoder: AutoencoderConfig
    dataset: str
    n_latents: int
    has_labels: bool
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.class_names is not None and not self.has_labels:
            raise ValueError("class_names need labels")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of decoded images."""
        return self.autoencoder.image_shape

    @property
    def latent_dim(self) -> int:
        """Latent dimension d."""
        return self.autoencoder.latent_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with image shape and d repeated for readers that skip the arch."""
        return {
            "format": BUNDLE_FORMAT,
            "dataset": self.dataset,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "n_latents": self.n_latents,
            "has_labels": self.has_labels,
            **({} if self.class_names is None else {"class_names": list(self.class_names)}),
            "autoencoder": self.autoencoder.to_dict(),
        }


def batched_apply(
    module: nn.Module, x: np.ndarray, *, batch_size: int = DEFAULT_BATCH, device: str = "cpu"
) -> np.ndarray:
    """Apply ``module`` in eval mode without gradients to ``x`` in batches; float32 numpy out."""
    module.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch_size):
            batch = torch.from_numpy(np.array(x[lo : lo + batch_size], dtype=np.float32))
            out.append(module(batch.to(device, torch.float32)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


class Bundle:
    """A loaded bundle: decoder, encoder, training latents and metadata (eval mode).

    Attributes:
        path: the bundle directory.
        config: architecture and dataset metadata.
        metrics: training metrics, or ``None`` if the bundle has none.
        latents: training-set latents, shape ``(N, d)``, float32 (read-only).
        labels: training-set labels, shape ``(N,)``, int64, or ``None``.
        model: the autoencoder module (``.encoder``, ``.decoder``), eval mode.

    """

    def __init__(
        self,
        *,
        path: Path,
        config: BundleConfig,
        model: Autoencoder,
        latents: np.ndarray,
        labels: np.ndarray | None,
        metrics: TrainMetrics | None,
        device: str = "cpu",
    ) -> None:
        self.path = path
        self.config = config
        self.model = model.to(device).eval()
        self.latents = latents
        self.labels = labels
        self.metrics = metrics
        self.device = device

    def decode(self, latents: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Decode latents of shape ``(n, d)`` to images ``(n, C, H, W)``, float32 in [0, 1]."""
        z = np.asarray(latents, dtype=np.float32)
        d = self.config.latent_dim
        if z.ndim != 2 or z.shape[1] != d:
            raise ValueError(f"latents must have shape (n, {d}), got {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError("latents contain NaN or inf")
        if z.shape[0] == 0:
            return np.zeros((0, *self.config.image_shape), np.float32)
        out = batched_apply(self.model.decoder, z, batch_size=batch_size, device=self.device)
        return np.clip(out, 0.0, 1.0)

    def encode(self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Encode images of shape ``(n, C, H, W)`` in [0, 1] to latents ``(n, d)``, float32."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            shape = self.config.image_shape
            raise ValueError(f"images must have shape (n, {shape}), got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.config.latent_dim), np.float32)
        return batched_apply(self.model.encoder, x, batch_size=batch_size, device=self.device)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Bundle({str(self.path)!r}, dataset={c.dataset!r}, arch={c.autoencoder.arch!r}, "
            f"image_shape={c.image_shape}, latent_dim={c.latent_dim}, n_latents={c.n_latents})"
        )


def save_bundle(
    path: str | os.PathLike[str],
    *,
    model: Autoencoder,
    latents: np.ndarray,
    dataset: str,
    labels: np.ndarray | None = None,
    class_names: tuple[str, ...] | None = None,
    metrics: TrainMetrics | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a bundle directory atomically (temp sibling directory, then rename).

    Args:
        path: bundle directory to create (or replace when ``overwrite``).
        model: the trained autoencoder.
        latents: training-set latents, shape ``(N, d)``.
        dataset: dataset name.
        labels: training-set labels, shape ``(N,)``, or ``None``.
        class_names: the name of each label, label 0 first (needs ``labels``), or ``None``.
        metrics: training metrics for ``metrics.json``.
        overwrite: replace an existing bundle; otherwise an existing path is a ``ValueError``.

    Returns:
        The bundle path.

    """
    path = Path(path)
    z = np.ascontiguousarray(latents, dtype=np.float32)
    d = model.config.latent_dim
    if z.ndim != 2 or z.shape[1] != d or z.shape[0] == 0:
        raise ValueError(f"latents must have shape (N, {d}) with N >= 1, got {z.shape}")
    if labels is not None and np.shape(labels) != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {np.shape(labels)}")
    if path.exists() and not overwrite:
        raise ValueError(f"bundle {path} already exists (overwrite=False)")
    config = BundleConfig(
        autoencoder=model.config,
        dataset=dataset,
        n_latents=int(z.shape[0]),
        has_labels=labels is not None,
        class_names=None if class_names is None else check_class_names(class_names),
    )
    if labels is not None:
        _check_names_cover(config, np.asarray(labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        _write_contents(tmp, model, config, z, labels, metrics)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_contents(
    tmp: Path,
    model: Autoencoder,
    config: BundleConfig,
    latents: np.ndarray,
    labels: np.ndarray | None,
    metrics: TrainMetrics | None,
) -> None:
    for part in ("encoder", "decoder"):
        weights = getattr(model, part).state_dict()
        state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        save_file(state, str(tmp / f"{part}.safetensors"))
    np.save(tmp / "latents.npy", latents)
    if labels is not None:
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
    (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    if metrics is not None:
        (tmp / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2))
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing bundle is moved aside first, then deleted."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_bundle(
    path: str | os.PathLike[str], *, device: str = "cpu", max_parameters: int = MAX_PARAMETERS
) -> Bundle:
    """Load a bundle written by :func:`save_bundle`.

    Args:
        path: the bundle directory.
        device: torch device for the modules (``"cpu"`` or ``"cuda"``).
        max_parameters: refuse a config whose autoencoder has more parameters (counted on
            PyTorch's meta device, so an absurd architecture allocates nothing).

    Raises:
        ValueError: missing directory or file, unknown format, an architecture over
            ``max_parameters``, or contents that do not match the config (weights, latent
            shape, label count), or a JSON file of the wrong shape.

    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"bundle {path} does not exist or is not a directory")
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if missing:
        raise ValueError(f"bundle {path} is missing {missing}")
    config = _read_config(path)
    try:
        n_params = parameter_count(config.autoencoder)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"config.json describes no buildable autoencoder: {exc}") from exc
    if n_params > max_parameters:
        raise ValueError(
            f"config.json asks for an autoencoder of {n_params:,} parameters; "
            f"the limit is {max_parameters:,}"
        )
    _check_weight_shapes(path, config.autoencoder)
    model = Autoencoder(config.autoencoder)
    for part in ("encoder", "decoder"):
        file = path / f"{part}.safetensors"
        try:
            getattr(model, part).load_state_dict(load_file(str(file)), strict=True)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ValueError(
                f"{file} does not hold weights for {config.autoencoder}: {exc}"
            ) from exc
    latents = _read_array(path / "latents.npy", (config.n_latents, config.latent_dim), np.float32)
    labels = None
    if config.has_labels:
        labels = _read_array(path / "labels.npy", (config.n_latents,), np.int64)
        _check_names_cover(config, labels)
    metrics = _read_metrics(path / "metrics.json")
    return Bundle(
        path=path,
        config=config,
        model=model,
        latents=latents,
        labels=labels,
        metrics=metrics,
        device=device,
    )


def _check_names_cover(config: BundleConfig, labels: np.ndarray) -> None:
    """Class names, when the bundle has them, name every label (``ValueError`` otherwise)."""
    names = config.class_names
    if (
        names is not None
        and labels.size
        and not 0 <= int(labels.min()) <= int(labels.max()) < len(names)
    ):
        raise ValueError(
            f"labels run from {int(labels.min())} to {int(labels.max())} but the bundle names "
            f"{len(names)} classes"
        )


def parameter_count(config: AutoencoderConfig) -> int:
    """Parameters (and BatchNorm buffers) of the autoencoder ``config`` describes.

    The modules are built on PyTorch's meta device: shapes only, no memory, whatever the widths.
    """
    if len(config.mlp_hidden) > _MAX_LAYERS:
        raise ValueError(f"mlp_hidden lists {len(config.mlp_hidden)} layers; at most {_MAX_LAYERS}")
    with torch.device("meta"):
        model = Autoencoder(config)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def _check_weight_shapes(path: Path, config: AutoencoderConfig) -> None:
    """Compare the tensors each weights file declares in its header with the architecture.

    Only the safetensors headers are read (the files' own bound: 100 MB), so weights of the
    wrong shape are refused before the autoencoder is allocated.
    """
    with torch.device("meta"):
        model = Autoencoder(config)
    for part in ("encoder", "decoder"):
        file = path / f"{part}.safetensors"
        expected = {k: tuple(v.shape) for k, v in getattr(model, part).state_dict().items()}
        try:
            with safe_open(str(file), framework="pt") as f:
                found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{file} does not hold weights for {config}: {exc}") from exc
        if found != expected:
            wrong = sorted(set(found) ^ set(expected)) or sorted(
                k for k in found if found[k] != expected[k]
            )
            key = wrong[0]
            raise ValueError(
                f"{file} does not hold weights for {config}: tensor {key!r} is "
                f"{found.get(key, 'missing')}, expected {expected.get(key, 'none')}"
            )


def _read_json_object(file: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a list or a number is a ``ValueError``)."""
    size = file.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{file.name} is {size:,} bytes; a {what} is at most {MAX_JSON_BYTES:,}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file.name} is not a valid {what} (not JSON: {exc})") from exc
    except RecursionError:
        raise ValueError(f"{file.name} is not a valid {what} (JSON nested too deeply)") from None
    except ValueError as exc:  # an integer over Python's digit limit
        raise ValueError(f"{file.name} is not a valid {what} ({exc})") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"{file.name} is not a valid {what} (a JSON {kind}, not an object)")
    return data


def _read_metrics(file: Path) -> TrainMetrics | None:
    if not file.is_file():
        return None
    data = _read_json_object(file, "metrics file")
    history = data.get("history", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"{file.name}: history must be a list of objects")
    try:
        return TrainMetrics.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{file.name} is corrupt: {exc}") from exc


def _read_config(path: Path) -> BundleConfig:
    file = path / "config.json"
    data = _read_json_object(file, "bundle config")
    try:
        if data.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if not isinstance(data.get("autoencoder"), dict):
            raise ValueError("'autoencoder' must be a JSON object")
        names = data.get("class_names")
        config = BundleConfig(
            autoencoder=AutoencoderConfig.from_dict(data["autoencoder"]),
            dataset=str(data["dataset"]),
            n_latents=int(data["n_latents"]),
            has_labels=bool(data["has_labels"]),
            class_names=None if names is None else check_class_names(names),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{file.name} is not a valid bundle config: {exc}") from exc
    if tuple(data.get("image_shape", config.image_shape)) != config.image_shape:
        raise ValueError(f"{file.name}: image_shape disagrees with the autoencoder config")
    return config


def _read_array(file: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Read a ``.npy`` file of exactly ``shape`` and ``dtype``, judged from its header first.

    The header's shape, dtype and data size (against the file's size) are checked before any
    array is allocated, so a 200-byte file whose header claims 3 TB allocates nothing.
    """
    _check_npy_header(file, shape, np.dtype(dtype))
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{file} is not a readable .npy file: {exc}") from exc
    if arr.shape != shape or arr.dtype != dtype:
        raise ValueError(f"{file} must hold {np.dtype(dtype)} {shape}, got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{file} contains NaN or inf")
    arr.flags.writeable = False
    return arr


def _check_npy_header(file: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    """Refuse a ``.npy`` file whose header is not ``shape``/``dtype`` or whose data is short."""
    try:
        with open(file, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                header = npy_format.read_array_header_1_0(f, max_header_size=_MAX_NPY_HEADER)
            elif version == (2, 0):
                header = npy_format.read_array_header_2_0(f, max_header_size=_MAX_NPY_HEADER)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            data_bytes = file.stat().st_size - f.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise ValueError(f"{file} is not a readable .npy file: {exc}") from exc
    found_shape, _, found_dtype = header
    if tuple(found_shape) != shape or found_dtype != dtype:
        raise ValueError(
            f"{file} must hold {dtype} {shape}, its header says {found_dtype} {tuple(found_shape)}"
        )
    claimed = math.prod(shape) * dtype.itemsize
    if data_bytes != claimed:
        raise ValueError(
            f"{file} holds {data_bytes:,} bytes of data; its header promises {claimed:,}"
        )
