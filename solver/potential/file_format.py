"""The file format of a fitted potential: the one place that writes and reads its arrays.

A potential file is an ``.npz`` archive (``np.load(..., allow_pickle=False)`` reads it) of
plain arrays and one ``meta`` entry, a JSON string with the scalars, names and the format
version. Version 2 (written today) holds each quantity once:

==================  ============  =======================================================
key                 shape         meaning
==================  ============  =======================================================
``targets``         ``(N, d)``    y, float32, the merged distinct targets
``heights``         ``(N,)``      h, float64, in the targets' coordinates
``inverse``         ``(N_in,)``   caller's target row -> merged target, int64
``pairs``           ``(P, 2)``    observed adjacent cell pairs (i < j), int64
``pair_counts``     ``(P,)``      samples whose top-2 cells were the pair, int64
``facet_measures``  ``(P,)``      estimated facet (d-1)-volumes, float64
``angles``          ``(P,)``      dihedral angles, radians, float64
``singular``        ``(P,)``      whether each facet is singular, bool
``mass_centres``    ``(N, d)``    cell mass centres, float64, ``nan`` rows without one
``centre_counts``   ``(N,)``      Monte Carlo samples per cell, int64
``radii``           ``(N,)``      valley frame only (else ``(0,)``): each target's k-th
                                  neighbour distance; optional, recomputed when absent
``embedding``       ``(N, m)``    diffusion frame only (else absent or ``(0, 0)``): each
                                  target's diffusion coordinates, float32; optional,
                                  recomputed when absent
==================  ============  =======================================================

``meta`` may also hold ``clusters``, the number of spectral clusters the rule used (0 or
absent: none).

Version 1 (``aeot-potential/1``, written by the service before the solver owned the format)
prefixed the map's arrays with ``map_`` and stored the heights twice; it is still read.
Reading verifies keys, shapes, finiteness and the version and raises
:class:`PotentialFormatError` (a ``ValueError``) naming what is wrong.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import asdict
from typing import Any

import numpy as np

from solver.estimation.host import AccuracyReport
from solver.measures import SourceMeasure
from solver.potential.extended_map import ExtendedMap
from solver.potential.singular import FRAMES, Adjacency, SingularSet
from solver.potential.threshold import (
    FixedThreshold,
    GapThreshold,
    QuantileThreshold,
    ThresholdRule,
    rule_from_dict,
    rule_to_dict,
)

FORMAT = "aeot-potential"
VERSION = 2
_LEGACY_FORMAT = "aeot-potential/1"
_ARRAYS = (
    "targets",
    "heights",
    "inverse",
    "pairs",
    "pair_counts",
    "facet_measures",
    "angles",
    "singular",
    "mass_centres",
    "centre_counts",
)
_META = ("n_samples", "threshold", "rule", "frame", "gap_ratio", "reason", "k", "power", "source")


class PotentialFormatError(ValueError):
    """A file that is not a readable potential (torn, foreign, inconsistent or too new)."""


def to_bytes(ext: ExtendedMap, inverse: np.ndarray, accuracy: AccuracyReport | None) -> bytes:
    """Encode a potential (its extended map, inverse map and accuracy) as version 2 bytes."""
    s, adj, src = ext.singular_set, ext.adjacency, ext.source
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "n_samples": adj.n_samples,
        "threshold": s.threshold,
        "rule": rule_to_dict(s.rule),
        "frame": s.frame,
        "gap_ratio": s.gap_ratio,
        "reason": s.reason,
        "k": ext.k,
        "power": ext.power,
        "blend_margin": ext.blend_margin,
        "source": {"dim": src.dim, "domain": src.domain, "sampler": src.sampler},
        "accuracy": None if accuracy is None else asdict(accuracy),
        "clusters": s.clusters,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        targets=np.asarray(ext.targets, np.float32),
        heights=ext.heights,
        inverse=np.asarray(inverse, np.int64),
        pairs=adj.pairs,
        pair_counts=adj.counts,
        facet_measures=adj.facet_measures,
        angles=s.angles,
        singular=s.singular,
        mass_centres=ext.mass_centres,
        centre_counts=ext.centre_counts,
        radii=s.radii,
        embedding=np.asarray(s.embedding, np.float32),
        meta=np.array(json.dumps(meta)),
    )
    return buf.getvalue()


def read(
    path: str | os.PathLike[str], backend: str = "auto"
) -> tuple[ExtendedMap, np.ndarray, AccuracyReport | None]:
    """Read and verify a potential file.

    Args:
        path: the ``.npz`` file.
        backend: cell index backend of the rebuilt map.

    Returns:
        ``(extended_map, inverse, accuracy)``; accuracy is ``None`` for version 1 files.

    Raises:
        PotentialFormatError: not a potential file, unknown version, missing keys, bad shapes
            or non-finite values. FileNotFoundError: no such file.

    """
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {key: z[key] for key in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PotentialFormatError(f"{path}: not a potential file ({exc})") from exc
    meta = _meta(raw, path)
    arrays, meta = _from_legacy(raw, meta) if meta.get("format") == _LEGACY_FORMAT else (raw, meta)
    try:
        return _decode(arrays, meta, backend)
    except PotentialFormatError as exc:
        raise PotentialFormatError(f"{path}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise PotentialFormatError(f"{path}: inconsistent potential ({exc})") from exc


def read_accuracy(path: str | os.PathLike[str]) -> AccuracyReport | None:
    """The accuracy stored in a potential file, reading only its metadata entry.

    Cheap whatever the file's size (one small member of the archive); the arrays are not
    read or verified (:func:`read` does that).

    Raises:
        PotentialFormatError: not a potential file (torn, foreign, unknown version).
        FileNotFoundError: no such file.

    """
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {"meta": z["meta"]} if "meta" in z.files else {}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PotentialFormatError(f"{path}: not a potential file ({exc})") from exc
    meta = _meta(raw, path)
    acc = meta.get("accuracy")
    try:
        return AccuracyReport(**acc) if isinstance(acc, dict) else None
    except TypeError as exc:
        raise PotentialFormatError(f"{path}: unreadable accuracy ({exc})") from exc


def _meta(raw: dict[str, np.ndarray], path: str | os.PathLike[str]) -> dict[str, Any]:
    if "meta" not in raw or raw["meta"].shape != ():
        raise PotentialFormatError(f"{path}: no metadata entry, not a potential file")
    try:
        meta = json.loads(str(raw["meta"].item()))
    except json.JSONDecodeError as exc:
        raise PotentialFormatError(f"{path}: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise PotentialFormatError(f"{path}: metadata is not a JSON object")
    legacy = meta.get("format") == _LEGACY_FORMAT
    if not legacy and (meta.get("format") != FORMAT or meta.get("version") != VERSION):
        raise PotentialFormatError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; this "
            f"build reads {FORMAT!r} version {VERSION} and {_LEGACY_FORMAT!r}"
        )
    return meta


def _decode(
    arrays: dict[str, np.ndarray], meta: dict[str, Any], backend: str
) -> tuple[ExtendedMap, np.ndarray, AccuracyReport | None]:
    missing = sorted(set(_ARRAYS) - set(arrays)) + sorted(set(_META) - set(meta))
    if missing:
        raise PotentialFormatError(f"missing entries {missing}")
    a = _checked_arrays(arrays)
    if meta["frame"] not in FRAMES:
        raise PotentialFormatError(f"frame must be one of {list(FRAMES)}, got {meta['frame']!r}")
    pairs = a["pairs"]
    adjacency = Adjacency(
        pairs=pairs,
        counts=a["pair_counts"],
        facet_measures=a["facet_measures"],
        n_samples=int(meta["n_samples"]),
    )
    singular_set = SingularSet(
        pairs=pairs,
        angles=a["angles"],
        singular=a["singular"],
        threshold=float(meta["threshold"]),
        rule=rule_from_dict(meta["rule"]),
        frame=meta["frame"],
        gap_ratio=float(meta["gap_ratio"]),
        reason=str(meta["reason"]),
        radii=_radii(arrays, a["targets"].shape[0], meta["frame"]),
        embedding=_embedding(arrays, a["targets"].shape[0], meta["frame"]),
        clusters=int(meta.get("clusters") or 0),
    )
    src = meta["source"]
    ext = ExtendedMap(
        targets=a["targets"],
        heights=a["heights"],
        source=SourceMeasure(dim=int(src["dim"]), domain=src["domain"], sampler=src["sampler"]),
        adjacency=adjacency,
        singular_set=singular_set,
        mass_centres=a["mass_centres"],
        centre_counts=a["centre_counts"],
        k=int(meta["k"]),
        power=float(meta["power"]),
        # Files written before the margin existed blended across every regular facet.
        blend_margin=float(meta.get("blend_margin", 1.0)),
        backend=backend,
    )
    acc = meta.get("accuracy")
    return ext, a["inverse"], None if acc is None else AccuracyReport(**acc)


def _radii(arrays: dict[str, np.ndarray], n: int, frame: str) -> np.ndarray:
    """The valley frame's neighbour radii, shape ``(N,)``.

    Empty for the other frames, or when absent (the set then recomputes them when scoring).
    """
    radii = np.asarray(arrays.get("radii", np.zeros(0)), np.float64)
    if frame != "valley" or radii.size == 0:
        return np.zeros(0)
    if radii.shape != (n,) or not np.isfinite(radii).all():
        raise PotentialFormatError(f"radii must be {n} finite distances, got shape {radii.shape}")
    return radii


def _embedding(arrays: dict[str, np.ndarray], n: int, frame: str) -> np.ndarray:
    """The diffusion frame's coordinates, shape ``(N, m)``, float64.

    ``(0, 0)`` for the other frames, or when absent (the set then recomputes them when
    scoring).
    """
    coords = np.asarray(arrays.get("embedding", np.zeros((0, 0))), np.float64)
    if frame != "diffusion" or coords.size == 0 and coords.shape[0] != n:
        return np.zeros((0, 0))
    if coords.ndim != 2 or coords.shape[0] != n or not np.isfinite(coords).all():
        raise PotentialFormatError(
            f"embedding must be {n} rows of finite coordinates, got shape {coords.shape}"
        )
    return coords


def _checked_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays cast to their dtypes after checking shapes, index ranges and finiteness."""
    y = np.asarray(arrays["targets"])
    if y.ndim != 2 or 0 in y.shape:
        raise PotentialFormatError(f"targets must have shape (N, d), got {y.shape}")
    n, d = y.shape
    pairs = np.asarray(arrays["pairs"])
    p = pairs.shape[0] if pairs.ndim == 2 and pairs.shape[1] == 2 else -1
    want = {"heights": (n,), "mass_centres": (n, d), "centre_counts": (n,), "pairs": (p, 2)}
    want.update({key: (p,) for key in ("pair_counts", "facet_measures", "angles", "singular")})
    for key, shape in want.items():
        if np.asarray(arrays[key]).shape != shape or p < 0:
            raise PotentialFormatError(
                f"{key} has shape {np.asarray(arrays[key]).shape}, expected {shape} "
                f"for {n} targets in d={d} and {max(p, 0)} pairs"
            )
    inverse = np.asarray(arrays["inverse"])
    if inverse.ndim != 1 or (inverse.size and not 0 <= inverse.min() <= inverse.max() < n):
        raise PotentialFormatError(f"inverse must be a 1-D array of indices into {n} targets")
    if pairs.size and not 0 <= pairs.min() <= pairs.max() < n:
        raise PotentialFormatError(f"pairs must index the {n} targets")
    for key in ("targets", "heights", "facet_measures", "angles"):
        if not np.isfinite(np.asarray(arrays[key], np.float64)).all():
            raise PotentialFormatError(f"{key} contain NaN or inf")
    if np.isinf(np.asarray(arrays["mass_centres"], np.float64)).any():
        raise PotentialFormatError("mass_centres contain inf")
    dtypes = {"targets": np.float32, "inverse": np.int64, "pairs": np.int64, "singular": bool}
    dtypes.update(pair_counts=np.int64, centre_counts=np.int64)
    return {key: np.asarray(arrays[key], dtypes.get(key, np.float64)) for key in _ARRAYS}


def _from_legacy(
    raw: dict[str, np.ndarray], meta: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Version 1 entries as version 2 ones (its map arrays were stored with a ``map_`` prefix)."""
    m = {key[4:]: value for key, value in raw.items() if key.startswith("map_")}
    arrays = {key: m[key] for key in _ARRAYS if key in m}
    arrays.update({key: raw[key] for key in ("heights", "inverse") if key in raw})
    scalars = {key: m[key].item() for key in m if m[key].shape == ()}
    try:
        rule = _legacy_rule(str(scalars["rule"]), scalars["threshold"], scalars["quantile"])
        converted = {
            "n_samples": scalars["n_samples"],
            "threshold": scalars["threshold"],
            "rule": rule_to_dict(rule),
            "frame": scalars["frame"],
            "gap_ratio": scalars["gap_ratio"],
            "reason": scalars.get("reason", ""),
            "k": scalars["k"],
            "power": scalars["power"],
            "source": {
                "dim": int(np.asarray(arrays["targets"]).shape[1]),
                "domain": scalars["domain"],
                "sampler": scalars["sampler"],
            },
            "accuracy": None,
        }
    except (KeyError, IndexError, ValueError) as exc:
        raise PotentialFormatError(f"version 1 potential lacks or garbles {exc}") from exc
    return arrays, {**meta, **converted}


def _legacy_rule(name: str, threshold: float, param: float) -> ThresholdRule:
    """Version 1 stored the rule's name and one parameter (a quantile or min_regular)."""
    if name == "fixed":
        return FixedThreshold(radians=float(threshold))
    if name == "quantile":
        return QuantileThreshold(q=float(param))
    if name == "gap":
        return GapThreshold(min_regular=0.5 if math.isnan(param) else float(param))
    raise ValueError(f"rule {name!r}")
