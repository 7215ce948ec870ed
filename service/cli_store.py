"""``aeot store``: operator commands on a store directory (no server needed).

``aeot store rebuild`` checks the catalogue and rebuilds it from the model directories when it
is missing, empty or corrupt (``--force``: also when it reads); servers and workers do the same
by themselves, at start and while they run. Safe while they run: a lock file serialises
rebuilds.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from service.cli_support import friendly, server_command

store_app = typer.Typer(help="Check and repair a model store (no server needed).")


@server_command(store_app, name="rebuild", group="store")
@friendly
def rebuild(
    store: Path = typer.Option(  # noqa: B008
        Path("store"), "--store", envvar="AEOT_STORE", help="the store directory"
    ),
    force: bool = typer.Option(
        False, "--force", help="rebuild even a catalogue that reads (its job history is lost)"
    ),
) -> None:
    """Rebuild the catalogue from the model directories when it is damaged (or --force)."""
    from service.cli_support import no_store_error
    from service.store import ModelStore

    if not (store / "models").is_dir():
        raise no_store_error(store)
    opened = ModelStore(store)  # a damaged catalogue is rebuilt as the store opens
    record = opened.heal(force=True) if force else opened.last_rebuild
    if record is None:
        typer.echo(
            f"the catalogue of {store} reads and is consistent; nothing to do "
            "(--force rebuilds it anyway)"
        )
        return
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["at"]))
    typer.echo(
        f"{at}: the catalogue was {record['why']}; rebuilt with {len(record['models'])} "
        f"models ({', '.join(record['models']) or 'none'}) and {record['potentials']} "
        "potentials; the job history is lost"
    )
    for skipped in record["skipped"]:
        typer.echo(f"  skipped {skipped}")
    if record["kept"]:
        typer.echo(f"  the old catalogue is kept in {store / record['kept']}")
