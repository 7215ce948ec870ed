"""What a person or a client may ask of a training run, declared once.

:class:`TrainOptions` (the recipe: subset, latent dimension, architecture, epochs, ...) and
:class:`DataOptions` (how the images are read: split, size, channels, class names) are the
fields, defaults, allowed values and help texts of :class:`models.TrainPlan` and
:class:`models.DatasetConfig`, which extend them. ``aeot train``, ``aeot serve --data`` and
``aeot models train`` build their options from :func:`options_of`, and the HTTP request
``POST /models/{name}/train`` its fields, so the three doors cannot drift apart.

Standard library only: the client install (``pip install aeot``, no torch, no numpy) builds
``aeot models train`` from this module.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

Arch = Literal["conv", "mlp"]
DecoderSchedule = Literal["constant", "cosine"]
Device = Literal["auto", "cpu", "cuda"]
Split = Literal["train", "test", "all"]
Channels = Literal[1, 3]
ARCHES: tuple[str, ...] = get_args(Arch)
DECODER_SCHEDULES: tuple[str, ...] = get_args(DecoderSchedule)
DEVICES: tuple[str, ...] = get_args(Device)
SPLITS: tuple[str, ...] = get_args(Split)
# Class names: at most this many, each at most this many characters (a page's selector and a
# terminal line show them; a hostile bundle or request cannot make them large).
MAX_CLASSES = 1000
MAX_CLASS_NAME = 64


def _option(
    help: str,
    *,
    default: Any = None,
    minimum: int | None = None,
    api_maximum: int | None = None,
    api: bool = True,
) -> Any:
    """A dataclass field that is an option (see :class:`Option` for the arguments)."""
    meta = {"help": help, "minimum": minimum, "api_maximum": api_maximum, "api": api}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One option of a training run, read from its dataclass field.

    Attributes:
        name: the field's name (``latent_dim``); the command line spells it ``--latent-dim``.
        annotation: its type (``int | None``, ``DecoderSchedule | None``, ...).
        default: its default.
        help: one line for ``--help`` and the API's schema.
        minimum: smallest value (each side for ``image_size``), ``None`` for none.
        api_maximum: largest value an HTTP request may ask for (a request cannot buy unbounded
            work); the command line has no such cap.
        api: whether a request to the API sets it (device and threads are the server's).

    """

    name: str
    annotation: Any
    default: Any
    help: str
    minimum: int | None
    api_maximum: int | None
    api: bool

    @property
    def base(self) -> Any:
        """The annotation without ``None``."""
        if get_origin(self.annotation) in (Union, types.UnionType):
            return next(a for a in get_args(self.annotation) if a is not type(None))
        return self.annotation

    @property
    def optional(self) -> bool:
        """Whether ``None`` (unset: a default chosen from the data) is allowed."""
        return type(None) in get_args(self.annotation)

    @property
    def choices(self) -> tuple[Any, ...]:
        """The allowed values of a ``Literal`` option, else ``()``."""
        return get_args(self.base) if get_origin(self.base) is Literal else ()

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``"must be >= 1, got 0"``), ``None`` when it is fine."""
        if value is None:
            return None if self.optional else "must be given"
        if self.choices:
            if value in self.choices and type(value) is type(self.choices[0]):
                return None
            return f"must be {_either(self.choices)}, got {value!r}"
        if self.base is int:
            return _integer_problem(value, self.minimum)
        if self.name == "image_size":
            ok = isinstance(value, tuple | list) and len(value) == 2
            if not ok or any(_integer_problem(v, self.minimum) for v in value):
                return f"must be (H, W) with H, W >= {self.minimum}, got {value!r}"
            return None
        if self.name == "class_names":
            return _names_problem(value)
        return None


def _either(choices: tuple[Any, ...]) -> str:
    """``constant or cosine``; ``train, test or all``."""
    words = [str(c) for c in choices]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _integer_problem(value: Any, minimum: int | None) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"must be an integer, got {value!r}"
    if minimum is not None and value < minimum:
        return f"must be >= {minimum}, got {value}"
    return None


def _names_problem(value: Any) -> str | None:
    if not isinstance(value, tuple | list) or not value:
        return f"must be a non-empty list of names, got {value!r}"
    if len(value) > MAX_CLASSES:
        return f"must be at most {MAX_CLASSES} names, got {len(value)}"
    for name in value:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_CLASS_NAME:
            return f"must be names of 1 to {MAX_CLASS_NAME} characters, got {name!r}"
    return None


def check_class_names(names: Any) -> tuple[str, ...]:
    """``names`` as a tuple of class names; ``ValueError`` unless 1 to MAX_CLASSES short names."""
    problem = _names_problem(names)
    if problem is not None:
        raise ValueError(f"class_names {problem}")
    return tuple(names)


def options_of(cls: type) -> tuple[Option, ...]:
    """The options of :class:`TrainOptions` or :class:`DataOptions` (or a class extending one)."""
    if cls not in _OPTIONS:
        hints = get_type_hints(cls)
        _OPTIONS[cls] = tuple(
            Option(name=f.name, annotation=hints[f.name], default=f.default, **f.metadata)
            for f in fields(cls)
            if "help" in f.metadata
        )
    return _OPTIONS[cls]


_OPTIONS: dict[type, tuple[Option, ...]] = {}


def values_of(obj: Any, cls: type, *, api: bool = False) -> dict[str, Any]:
    """The values of ``cls``'s options on ``obj`` (an instance of ``cls`` or of a subclass).

    ``api=True``: only those a request to the API sets.
    """
    return {o.name: getattr(obj, o.name) for o in options_of(cls) if o.api or not api}


def pick(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are options of ``cls``, lists as tuples (JSON has none)."""
    names = {o.name for o in options_of(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}


class _Validated:
    """Checks every option of a dataclass after ``__init__`` (``ValueError`` naming it)."""

    def __post_init__(self) -> None:
        for option in options_of(type(self)):
            problem = option.problem(getattr(self, option.name))
            if problem is not None:
                raise ValueError(f"{option.name} {problem}")


@dataclass(frozen=True, kw_only=True)
class TrainOptions(_Validated):
    """The recipe of a training run; unset options take defaults chosen by image size."""

    subset: int | None = _option(
        "train on a seeded random subset of this many images (default: all)", minimum=1
    )
    latent_dim: int | None = _option(
        "latent dimension d (default 8 for small images, 32 otherwise)",
        minimum=1,
        api_maximum=1024,
    )
    arch: Arch | None = _option(
        "autoencoder: conv or mlp (default: mlp for images of at most 16 x 16 pixels, conv "
        "otherwise)"
    )
    epochs: int | None = _option(
        "joint epochs at most; a plateau ends them early (default: the recipe's, 120 for small "
        "images, 30 otherwise)",
        minimum=1,
        api_maximum=10_000,
    )
    decoder_epochs: int | None = _option(
        "decoder-only epochs after the encoder freezes (default: the recipe's, a third of the "
        "joint epochs)",
        minimum=0,
        api_maximum=10_000,
    )
    decoder_schedule: DecoderSchedule | None = _option(
        "the decoder phase's step size: constant (the recipe's) or cosine (falls from the "
        "recipe's step to zero over the phase)"
    )
    seed: int = _option(
        "seed of the subset, the initial weights and every epoch's shuffle",
        default=0,
        minimum=0,
        api_maximum=2**31 - 1,
    )
    device: Device = _option("auto, cpu or cuda", default="auto", api=False)
    threads: int | None = _option(
        "torch and BLAS threads while training (default: every core for the conv recipe, "
        "the recipe's for the MLP)",
        minimum=1,
        api=False,
    )


@dataclass(frozen=True, kw_only=True)
class DataOptions(_Validated):
    """How a dataset's images are read; unset options keep the data's own."""

    split: Split = _option(
        "IDX split (MNIST-style data and digits): train, test or all", default="train"
    )
    image_size: tuple[int, int] | None = _option(
        "H x W to resize images to (image folders: 28 x 28 unless given; arrays keep theirs)",
        minimum=4,
        api_maximum=256,
    )
    channels: Channels | None = _option(
        "1 (gray) or 3 (RGB) for arrays and image folders (default: the data's own; gray for "
        "folders)"
    )
    class_names: tuple[str, ...] | None = _option(
        "names of the classes, label 0 first (default: an image folder's sub-folder names, "
        "Fashion-MNIST's ten; none for digits)"
    )
