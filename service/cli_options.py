"""Command-line options built from their one declaration.

- :func:`settings_options` gives a command one option per :class:`Settings` field
  (``--api-key``, ``--device``, ``--log-level``, ...), each overriding its ``AEOT_*`` variable.
- :func:`run_options` gives a command one option per option of a training run
  (:mod:`models.options`: ``--epochs``, ``--latent-dim``, ``--image-size``, ...), the same ones
  the API's train request takes, checked as the run checks them.

Like the client commands, this module needs only the client's packages until a server
command is declared (the settings are the server's; the training options are standard library).
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

import typer

from models.options import DataOptions, Option, TrainOptions, options_of
from service.cli_support import CliError, server_missing

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])
_SETTINGS_PANEL = "Settings (override AEOT_* variables)"


def _option_type(annotation: Any) -> tuple[Any, str]:
    """Click-friendly type of a settings field and a note on accepted values."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
        args = get_args(annotation)
    if get_origin(annotation) is dict:
        return str, " (JSON object)"
    if get_origin(annotation) in (tuple, list):
        return list[str], " (repeat the option for several)"
    if get_origin(annotation) is Literal:
        return str, " (" + " | ".join(str(a) for a in args) + ")"
    if annotation in (bool, int, float, Path):
        return annotation, ""
    return str, ""  # str, SecretStr


def _setting_parameters(name: str, field: FieldInfo) -> list[inspect.Parameter]:
    """The option of one setting; two for a boolean (``--worker`` and ``--no-worker``).

    A boolean's two forms are two options, each on its own help row: as one ``--x/--no-x``
    option their names share a row and are cut at 80 columns.
    """
    from pydantic import SecretStr  # the server's package

    kind, values = _option_type(field.annotation)
    default = field.default
    shown = "unset" if default is None else default
    if isinstance(default, SecretStr):
        shown = "set"
    description = field.description or name.replace("_", " ")
    # Parentheses: typer's help reads square brackets as markup and drops them.
    where = f"(env AEOT_{name.upper()}; default {str(shown).lower() if kind is bool else shown})"
    forms = [(name, f"{description}{values} {where}")]
    if kind is bool:
        forms.append((f"no_{name}", f"the opposite of {flag(name)}"))
    return [
        inspect.Parameter(
            key,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False if kind is bool else None,
                flag(key),
                help=text,
                show_default=False,
                rich_help_panel=_SETTINGS_PANEL,
            ),
            annotation=bool if kind is bool else kind | None,
        )
        for key, text in forms
    ]


def settings_options(fn: F) -> F:
    """Give a command one option per :class:`Settings` field, passed as ``overrides``.

    ``fn`` takes ``overrides: dict[str, Any]`` (only the options given) besides its own
    parameters; a parameter of its own with a field's name wins over the generated option.
    Without the server installed ``fn`` comes back as it is (see :func:`server_command`).
    """
    if server_missing() is not None:
        return fn
    from service.settings import Settings  # the server's settings

    own = inspect.signature(fn, eval_str=True)
    params = [p for p in own.parameters.values() if p.name != "overrides"]
    taken = {p.name for p in params}
    names = [n for n in Settings.model_fields if n not in taken]
    extra = [p for n in names for p in _setting_parameters(n, Settings.model_fields[n])]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {}
        for n in names:
            value = _given(kwargs.pop(n))
            if f"no_{n}" in kwargs:  # a boolean: --x, --no-x or neither
                off = kwargs.pop(f"no_{n}")
                if value and off:
                    raise CliError(f"{flag(n)} and --no-{flag(n)[2:]} contradict each other")
                value = True if value else False if off else None
            if value is not None:
                overrides[n] = value
        return fn(overrides=overrides, **kwargs)

    return _with_parameters(wrapper, own, params, extra)


def _with_parameters(
    wrapper: Callable[..., Any],
    own: inspect.Signature,
    params: list[inspect.Parameter],
    extra: list[inspect.Parameter],
) -> Any:
    """``wrapper`` as typer sees it: the command's own ``params`` (keyword-only), then ``extra``."""
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    wrapper.__signature__ = own.replace(parameters=[*keyword, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}  # typer reads the types from the signature above
    return wrapper


def _given(value: Any) -> Any:
    """An option's value, ``None`` when not given (a repeatable option gives ``[]``)."""
    if isinstance(value, list | tuple):
        return tuple(value) if value else None
    return value


# ----------------------------------------------------------------------------- training runs

# The parameters a command decorated with run_options takes, and the class each one holds.
_RUN_CLASSES: dict[str, type] = {"data_options": DataOptions, "train_options": TrainOptions}


def flag(name: str) -> str:
    """The command line's spelling of an option (``latent_dim`` -> ``--latent-dim``)."""
    return "--" + name.replace("_", "-")


def _run_parameter(option: Option, panel: str | None) -> inspect.Parameter:
    """The typer parameter of one training option."""
    note = ""
    kind: Any = option.base
    if option.choices:
        kind = type(option.choices[0])
    elif option.name == "image_size":
        kind, note = str, " (e.g. 28x28)"
    elif option.name == "class_names":
        kind, note = str, " (comma-separated)"
    default = option.default
    typer_option = typer.Option(
        default,
        flag(option.name),
        help=f"{option.help}{note}",
        show_default=default is not None,
        rich_help_panel=panel,
    )
    annotation = kind | None if default is None else kind
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=typer_option, annotation=annotation
    )


def _read(option: Option, text: Any) -> Any:
    """An option's value from what typer parsed, checked (:class:`CliError` naming the flag)."""
    value = text
    if text is not None and option.name == "image_size":
        try:
            value = tuple(int(v) for v in str(text).lower().split("x"))
        except ValueError:
            raise CliError(f"--image-size must look like 28x28, got {text!r}") from None
    elif text is not None and option.name == "class_names":
        value = tuple(name.strip() for name in str(text).split(","))
    problem = option.problem(value)
    if problem is not None:
        raise CliError(f"{flag(option.name)} {problem}")
    return value


def run_options(*, api: bool = False, panel: str | None = None) -> Callable[[F], F]:
    """Give a command one option per option of a training run (:mod:`models.options`).

    The command takes ``train_options: TrainOptions`` and ``data_options: DataOptions``
    besides its own parameters; a parameter of its own with an option's name wins over the
    generated one. ``api=True`` leaves out what the server decides (device, threads), so the
    command has exactly the API's train options; ``panel`` groups them in ``--help``.
    """

    def decorate(fn: F) -> F:
        own = inspect.signature(fn, eval_str=True)
        params = [p for p in own.parameters.values() if p.name not in _RUN_CLASSES]
        taken = {p.name for p in params}
        chosen = {
            key: [o for o in options_of(cls) if (o.api or not api) and o.name not in taken]
            for key, cls in _RUN_CLASSES.items()
        }
        extra = [_run_parameter(o, panel) for group in chosen.values() for o in group]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            for key, cls in _RUN_CLASSES.items():
                kwargs[key] = cls(**{o.name: _read(o, kwargs.pop(o.name)) for o in chosen[key]})
            return fn(**kwargs)

        return _with_parameters(wrapper, own, params, extra)

    return decorate
