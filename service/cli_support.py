"""What every ``aeot`` command shares: errors for people, the client, server commands.

- :func:`friendly` turns any failure into one line on stderr saying what went wrong and what to
  do, with exit code 1 (2 for a store whose catalogue cannot be read or rebuilt, 130 when
  interrupted); ``aeot --debug ...`` (or ``AEOT_DEBUG=1``) shows the traceback instead.
- :func:`connect` opens the commands' :class:`AEOTClient`, which does not retry a 503: a person
  sees at once why and when to try again.
- :func:`server_command` declares a command that runs the server: on the client-only install
  (``pip install aeot``, no server packages) it says in one line what to install instead.
- :func:`calls` declares which API operation a client command calls and which of its
  parameters sets each API parameter of another name; a test holds every command to its
  operation's parameters, and a 422 names the command's option (``--n must be >= 1``) instead
  of the HTTP field (``query.n: Input should be greater than or equal to 1``).

This module, like the client commands, imports only the client's packages (httpx, typer);
pydantic and the settings load when a server command is declared or run.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import httpx
import typer

from service.client import AEOTClient, AEOTError, MissingExtra

if TYPE_CHECKING:
    from pydantic import ValidationError

    from service.settings import Settings
    from service.store import ModelStore

F = TypeVar("F", bound=Callable[..., Any])
# What installs the server: the `cpu` or `gpu` extra (each is `server` plus its FAISS).
SERVER_INSTALL = "pip install 'aeot[cpu]' (or 'aeot[gpu]' on a CUDA host)"
# Exit status of a command refused because its store's catalogue cannot be read or rebuilt.
EXIT_CATALOGUE_LOST = 2


class CliError(Exception):
    """A failure the command explains itself; the message says what to do."""


# What a command raises to end itself (an exit code, a declined confirmation, a bad value):
# typer's own handling applies. Recent typer vendors click, so these are not click's classes.
_TYPER_SIGNALS = (typer.Exit, typer.Abort, typer.BadParameter)


def friendly(fn: F) -> F:
    """Wrap a command so failures print one line (traceback only with ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _TYPER_SIGNALS:
            raise
        except KeyboardInterrupt as exc:  # its message, when a command gives one, says what next
            if _DEBUG["on"]:
                raise
            typer.echo(f"error: {str(exc) or 'interrupted'}", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _DEBUG["on"]:
                raise
            typer.echo(f"error: {explain(exc, fn)}", err=True)
            raise typer.Exit(_exit_status(exc)) from None

    return wrapper  # type: ignore[return-value]


def _exit_status(exc: Exception) -> int:
    # Only a command that opened a store can meet a lost catalogue; the others never load the
    # store's module (it imports torch).
    store = sys.modules.get("service.store")
    lost = store is not None and isinstance(exc, store.CatalogueLost)
    return EXIT_CATALOGUE_LOST if lost else 1


# Set by the root command's ``--debug`` before any command runs (one CLI run per process).
_DEBUG = {"on": False}


def set_debug(on: bool) -> None:
    """Show tracebacks (``True``) or one-line errors (``False``) from now on."""
    _DEBUG["on"] = on


def explain(exc: BaseException, command: Callable[..., Any] | None = None) -> str:
    """One line for a person: what went wrong and, where known, what to do.

    ``command``: the command that failed; a 422 of the API operation it :func:`calls` names
    its options.
    """
    if isinstance(exc, CliError | MissingExtra):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError):
        return server_needed("this command", exc.name)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"no server at {_base_url(exc)}: start it with `aeot serve` (or pass --url)"
    if isinstance(exc, httpx.TimeoutException):
        return f"the server at {_base_url(exc)} did not answer in time; try again"
    if isinstance(exc, httpx.HTTPError):
        return f"talking to the server failed: {exc}"
    if isinstance(exc, AEOTError):
        if exc.status_code == 422 and command is not None:
            return in_options(exc.detail, command)
        return _explain_http(exc)
    if _is_validation_error(exc):
        parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()]
        return "invalid setting: " + "; ".join(parts)
    if isinstance(exc, ValueError | OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (run `aeot --debug ...` for the traceback)"


def _is_validation_error(exc: BaseException) -> TypeGuard[ValidationError]:
    try:
        from pydantic import ValidationError  # the server's package
    except ModuleNotFoundError:
        return False
    return isinstance(exc, ValidationError)


def server_needed(command: str, missing: str | None) -> str:
    """The one line of a server command run where the server is not installed."""
    lacking = f" (no module {missing!r} here)" if missing else ""
    return f"{command} runs the server, which this install lacks{lacking}: {SERVER_INSTALL}"


@functools.cache
def server_missing() -> str | None:
    """The first module of the server's settings this install lacks (``None``: none)."""
    try:
        import service.settings  # noqa: F401 - pydantic-settings, numpy, the solver
    except ModuleNotFoundError as exc:
        return exc.name or "?"
    return None


def server_command(
    app: typer.Typer, name: str | None = None, *, group: str | None = None
) -> Callable[[F], F]:
    """``app.command(name)`` for a command that runs the server (serve, worker, fit, train...).

    Where the server is not installed the command is declared all the same, taking any
    arguments and saying in one line which install it needs (exit code 1); ``aeot --help``
    marks it so. Apply it outermost: the decorators below it see no settings then
    (:func:`settings_options` passes the command through). ``group``: the name of the
    command group ``app`` is (``store`` for ``aeot store rebuild``), for that line.
    """
    missing = server_missing()
    if missing is None:
        return app.command(name=name)

    def declare(fn: F) -> F:
        command = name or fn.__name__.replace("_", "-")
        summary = (inspect.getdoc(fn) or "").split("\n")[0]

        def unavailable() -> None:
            spelled = f"{group} {command}" if group else command
            typer.echo(f"error: {server_needed(f'`aeot {spelled}`', missing)}", err=True)
            raise typer.Exit(1)

        app.command(
            name=command,
            help=f"{summary} (needs the server install)",
            add_help_option=False,
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(unavailable)
        return fn

    return declare


# ----------------------------------------------------------------------------- API parity


@dataclass(frozen=True)
class Endpoint:
    """The API operation a client command calls.

    Attributes:
        method: ``GET``, ``POST``, ... path: as the OpenAPI schema writes it.
        renamed: the command's parameter that sets each API parameter of another name
            (``{"extended": "pure"}``: ``--pure`` sets ``extended``).

    """

    method: str
    path: str
    renamed: Mapping[str, str] = field(default_factory=dict)

    def parameter(self, api_name: str) -> str:
        """The command's parameter that sets API parameter ``api_name``."""
        return self.renamed.get(api_name, api_name)


def calls(method: str, path: str, **renamed: str) -> Callable[[F], F]:
    """Declare the API operation a client command calls (see :class:`Endpoint`).

    Apply it below :func:`friendly`, which reads it to name the command's options in a 422.
    """

    def mark(fn: F) -> F:
        fn.endpoint = Endpoint(method, path, renamed)  # type: ignore[attr-defined]
        return fn

    return mark


def option_name(parameter: inspect.Parameter) -> str:
    """How a person types a command's parameter: ``--latent-dim``, or ``START`` (argument)."""
    declared = parameter.default
    if isinstance(declared, typer.models.ArgumentInfo):
        return declared.metavar or parameter.name.upper()
    long = [d for d in getattr(declared, "param_decls", None) or () if d.startswith("--")]
    return long[0].split("/")[0] if long else "--" + parameter.name.replace("_", "-")


# The validation messages of the API in a person's words (first match wins).
_IN_WORDS = (
    (r"Input should be greater than or equal to (.+)", r"must be >= \1"),
    (r"Input should be greater than (.+)", r"must be > \1"),
    (r"Input should be less than or equal to (.+)", r"must be <= \1"),
    (r"Input should be less than (.+)", r"must be < \1"),
    (r"Input should be a valid integer.*", "must be an integer"),
    (r"Input should be a valid number.*", "must be a number"),
    (r"Input should be (.+)", r"must be \1"),
    (r"String should match pattern '(.+)'", r"must match \1"),
    (r"String should have at (most|least) (.+)", r"must have at \1 \2"),
    (r"List should have at (most|least) (.+)", r"must have at \1 \2"),
)
# Where a field sits in a 422 message: the request part, then the field.
_PARTS = ("query", "body", "path")


def in_options(detail: str, command: Callable[..., Any]) -> str:
    """A 422 message of the API (``query.n: Input should be ...``) in ``command``'s options.

    Each ``field: problem`` part whose field ``command`` sets becomes ``--option problem``
    (``--n must be >= 1``); other parts (limits, checks across fields) stay as they are.
    """
    endpoint = getattr(command, "endpoint", None)
    if endpoint is None:
        return detail
    params = inspect.signature(command).parameters
    parts = []
    for part in detail.split("; "):
        where, sep, problem = part.partition(": ")
        fields = [f for f in where.split(".") if f not in _PARTS]
        name = endpoint.parameter(fields[0]) if sep and fields and " " not in where else None
        if name is None or name not in params:
            parts.append(part.removeprefix("Value error, "))
            continue
        for pattern, words in _IN_WORDS:
            if re.fullmatch(pattern, problem):
                problem = re.sub(pattern, words, problem)
                break
        parts.append(f"{option_name(params[name])} {problem}")
    return "; ".join(parts)


def _base_url(exc: httpx.HTTPError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # no request attached
        return "the given URL"
    return f"{url.scheme}://{url.netloc.decode()}"


def _explain_http(exc: AEOTError) -> str:
    if exc.status_code == 401:
        return f"{exc.detail}: pass --api-key or set AEOT_API_KEY (the server's key)"
    if exc.status_code == 403 and "key" in exc.detail.lower():  # not "no data root" (403 too)
        return f"{exc.detail}: check --api-key / AEOT_API_KEY"
    if exc.status_code == 503 and exc.retry_after is not None:
        return (
            f"{exc.detail}; try again in {exc.retry_after:.0f} s "
            "(`aeot models list` shows training and fit progress)"
        )
    return exc.detail


def connect(url: str, api_key: str | None = None) -> AEOTClient:
    """The commands' :class:`AEOTClient` (use it in a ``with`` block).

    It does not retry a 503: a person sees at once why and when to try again. A 404 for an
    unknown model already names the known ones (the server says so).
    """
    return AEOTClient(url, api_key=api_key, retries=0)


def no_store_error(store: Path) -> CliError:
    """The error of a command that needs an existing store."""
    return CliError(
        f"no model store at {store}: train a model first (`aeot train`), or pass --store DIR"
    )


def open_existing_store(store: Path) -> ModelStore:
    """Open the store at ``store`` without creating one (a missing store is a :class:`CliError`).

    A store whose catalogue is lost but whose model directories are there is one: opening it
    rebuilds the catalogue from them.
    """
    from service.store import ModelStore  # imports torch, slow to load

    if not (store / "catalog.sqlite3").is_file() and not (store / "models").is_dir():
        raise no_store_error(store)
    return ModelStore(store)


def build_settings(**overrides: Any) -> Settings:
    """``Settings`` from the ``AEOT_*`` variables, with the given (non-``None``) overrides."""
    from service.settings import Settings  # the server's settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})
