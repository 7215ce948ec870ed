"""Atomic save and load of fit states and fitted potentials (the solver's only file I/O).

A fit state's file carries the :class:`~solver.fitting.config.FitConfig` the fit ran with (as
JSON in its metadata), so a resume can compare settings; files written before that resume
without the comparison.

Files are ``.npz`` archives with a JSON metadata entry, written to a temporary file in the
same directory, flushed to disk and renamed over the destination, so a crash at any moment
leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from solver.estimation.host import AccuracyReport
from solver.fitting.config import FitConfig, FitRecord, FitState

_FORMAT = "aeot-fit-state/1"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_state(path: str | os.PathLike[str], state: FitState) -> None:
    """Save a resumable :class:`FitState` atomically to ``path`` (an ``.npz`` file)."""
    meta = {
        "format": _FORMAT,
        "method": state.method,
        "iteration": state.iteration,
        "elapsed": state.elapsed,
        "counters": {k: float(v) for k, v in state.counters.items()},
        "seed": state.seed,
        "n_targets": state.n_targets,
        "history": [_record_to_json(r) for r in state.history],
    }
    if state.config is not None:
        meta["config"] = state.config.to_dict()
    arrays = {f"array_{k}": v for k, v in state.arrays.items()}
    buf = io.BytesIO()
    entries = {"heights": state.heights, "meta": np.array(json.dumps(meta)), **arrays}
    np.savez(buf, allow_pickle=False, **entries)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike[str]) -> FitState:
    """Load a state written by :func:`save_state`.

    Raises:
        ValueError: if the file is not a fit state of this format.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            heights = z["heights"].astype(np.float64)
            arrays = {k[6:]: z[k] for k in z.files if k.startswith("array_")}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable fit state: {exc}") from exc
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {_FORMAT!r}")
    try:  # states saved before configs were recorded have none; they still resume
        config = FitConfig.from_dict(meta["config"]) if "config" in meta else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} records an unreadable fit config: {exc}") from exc
    return FitState(
        method=meta["method"],
        heights=heights,
        iteration=int(meta["iteration"]),
        elapsed=float(meta["elapsed"]),
        counters=dict(meta["counters"]),
        arrays=arrays,
        history=tuple(_record_from_json(r) for r in meta["history"]),
        seed=int(meta["seed"]),
        n_targets=int(meta["n_targets"]),
        config=config,
    )


def _record_to_json(record: FitRecord) -> dict:
    out = asdict(record)
    return out


def _record_from_json(data: dict) -> FitRecord:
    check = data.get("check")
    return FitRecord(
        iteration=int(data["iteration"]),
        elapsed=float(data["elapsed"]),
        n_samples=int(data["n_samples"]),
        train_l1=float(data["train_l1"]),
        empty_cells=int(data.get("empty_cells", 0)),
        check=AccuracyReport(**check) if check else None,
    )
