"""The serving index: the latest published potential of each model, swapped atomically.

A :class:`Served` object holds everything a request needs (decoder, potential, version) and
never changes after it is built. :class:`ServingIndex` keeps a dict of them; a refresh builds
every new object completely and then replaces the dict with one assignment, so a request that
took its ``Served`` at the start sees one potential version from start to end, whatever swaps
happen meanwhile.

The index also keeps the model list of its last catalogue read, so generation requests never
touch the catalogue: while the catalogue is damaged (and rebuilt) they are answered from what
is loaded. Each refresh also checks the files of the served versions (size, time, inode) and
reads again one that changed: a file damaged under a running server is served around as at
start-up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models import Bundle, resolve_device
from service.catalog import CatalogueDamaged, ModelRecord
from service.errors import NotReady, UnknownVersion
from service.settings import Settings
from service.store import UNREADABLE, ModelStore, UnknownModel
from solver import AccuracyReport, ExtendedMap, Potential, backend_for_device

log = logging.getLogger("aeot.serving")


# Seconds before a bundle that did not load is read again (files may be restored meanwhile).
_BUNDLE_RETRY = 30.0
# Potential versions pinned by requests (``version=``) kept loaded besides the served ones.
PINNED_CACHE = 4
# What a catalogue read can raise while the file is damaged or being replaced.
CATALOGUE_ERRORS = (CatalogueDamaged, sqlite3.DatabaseError)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """``(inode, size, mtime_ns)`` of a file, ``None`` when it is gone: a cheap change test."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BundleDamaged(Exception):
    """A model's bundle (decoder weights, latents, config) does not load."""


class _StaleBundle(Exception):
    """The potential was fitted to a bundle the model no longer has (replaced meanwhile)."""


@dataclass(frozen=True, kw_only=True)
class Served:
    """One model at one potential version, ready to answer requests.

    Attributes:
        name: model name.
        version: potential version (increases with every publication).
        bundle: decoder and training latents.
        potential: the fitted potential of this version (heights, extended map, ...).
        accuracy: the independent accuracy check the version was published with.
        cell_labels: the class of each cell (majority label of the training codes it holds),
            shape ``(N,)`` int64, ``-1`` for a cell without codes; ``None`` when the bundle
            has no labels.
        path: the potential's file; stamp: its ``(inode, size, mtime_ns)`` when it was read.

    """

    name: str
    version: int
    bundle: Bundle
    potential: Potential
    accuracy: AccuracyReport | None
    cell_labels: np.ndarray | None = None
    path: Path | None = None
    stamp: tuple[int, int, int] | None = None

    @property
    def ext_map(self) -> ExtendedMap:
        """The pure and extended OT maps of this version."""
        return self.potential.extended_map

    @property
    def inverse(self) -> np.ndarray:
        """Training latent index -> distinct target index, shape ``(N_train,)``."""
        return self.potential.inverse

    @property
    def dim(self) -> int:
        """Latent dimension d."""
        return int(self.bundle.latents.shape[1])

    @property
    def classes(self) -> list[int]:
        """Labels that own at least one cell, ascending (empty without labels)."""
        if self.cell_labels is None:
            return []
        return [int(c) for c in np.unique(self.cell_labels[self.cell_labels >= 0])]


class ServingIndex:
    """Latest published potential per model, refreshed by polling the catalogue.

    A published version that does not load (torn, garbage or missing file) never breaks
    serving: the index keeps, or falls back to, the newest older version that loads, records
    the reason (:meth:`problem`, shown in ``/models``), tries the damaged version only once,
    retracts it in the catalogue (every process, and every restart, falls back to the last
    good version) and calls ``on_damaged`` so a refit is queued. A bundle that does not load
    makes the model not ready with that reason instead of "no fitted potential yet".

    A served version whose file changes on disk (size, time or inode: damaged, deleted,
    replaced) is read again at the next refresh; if it no longer loads it is withdrawn in the
    same way and the index falls back to the newest older version that loads. A version
    withdrawn by another process is dropped here too.

    Args:
        store: the model store.
        settings: device and poll interval.
        on_swap: called with ``(model, version)`` after each swap (metrics).
        on_damaged: called with the model name and the damaged version (a refit is queued).

    """

    def __init__(
        self,
        store: ModelStore,
        settings: Settings,
        on_swap: Callable[[str, int], None] | None = None,
        on_damaged: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_swap = on_swap
        self.on_damaged = on_damaged
        self._problems: dict[str, str] = {}
        self._damaged: dict[tuple[str, int], str] = {}
        self._bad_bundles: dict[tuple[str, str], tuple[float, str]] = {}
        self._served: dict[str, Served] = {}
        # The catalogue's models at the last read that worked, oldest first.
        self._models: dict[str, ModelRecord] = {}
        self._catalogue_error: str | None = None
        self._bundles: dict[tuple[str, str], Bundle] = {}
        self._refresh_lock = threading.Lock()
        self._pinned: dict[tuple[str, int], Served] = {}
        self._pinned_lock = threading.Lock()
        self._last_poll = -np.inf
        self._device = resolve_device(settings.device)
        self._backend = backend_for_device(self._device)
        log.info(
            "serving on device %s (AEOT_DEVICE=%s, cell index backend %s)",
            self._device,
            settings.device,
            self._backend,
        )

    def get(self, name: str, version: int | None = None) -> Served:
        """Return the served object of model ``name`` (or its published ``version``).

        Raises:
            UnknownModel: no such model. UnknownVersion: no such published version.
            NotReady: no potential published (or loaded) yet.

        """
        if version is not None:
            return self.pinned(name, version)
        served = self.current(name)
        if served is not None:
            return served
        if name not in self._models:
            try:
                self.store.model(name)  # raises UnknownModel (a model registered a moment ago)
            except CATALOGUE_ERRORS as exc:
                raise NotReady(
                    f"model {name!r} is not loaded and the catalogue cannot be read ({exc}); it "
                    "is being rebuilt from the model directories",
                    retry_after=5.0,
                ) from exc
        problem = self.problem(name)
        message = (
            f"model {name!r} cannot be served: {problem}"
            if problem
            else f"model {name!r} has no fitted potential yet; see /models/{name} for fit progress"
        )
        raise NotReady(message, retry_after=max(self.settings.poll_interval, 5.0))

    def current(self, name: str) -> Served | None:
        """Return what model ``name`` serves now, or ``None`` (nothing published or unknown).

        Polls when due; when nothing is loaded yet, waits for a refresh in progress elsewhere
        (the poller may be loading the first version) instead of answering not ready.
        """
        self.poll_if_due()
        served = self._served.get(name)  # one read of one reference: a consistent version
        if served is None:
            self.try_refresh(blocking=True)
            served = self._served.get(name)
        return served

    def models(self) -> list[ModelRecord]:
        """The models of the last catalogue read that worked, oldest first."""
        return list(self._models.values())

    def default_model(self) -> str | None:
        """The model answering when none is named: the configured one, else the oldest."""
        self.poll_if_due()
        if not self._models:  # nothing read yet, or no model yet: look now
            self.try_refresh(blocking=True)
        models = self._models
        if self.settings.default_model in models:
            return self.settings.default_model
        return next(iter(models), None)

    @property
    def catalogue_error(self) -> str | None:
        """Why the last catalogue read failed (``None``: it worked)."""
        return self._catalogue_error

    def pinned(self, name: str, version: int) -> Served:
        """Model ``name`` at published potential ``version`` (the served one, or loaded for it).

        Versions other than the served one are kept in a small cache (``PINNED_CACHE``
        entries, least recently used dropped).

        Raises:
            UnknownModel: no such model. UnknownVersion: the version was never published (or
            was retracted), belongs to a bundle the model no longer has, or does not load.

        """
        current = self.current(name)
        if current is not None and current.version == version:
            return current
        key = (name, version)
        with self._pinned_lock:
            served = self._pinned.pop(key, None) or self._load_pinned(name, version)
            self._pinned[key] = served
            while len(self._pinned) > PINNED_CACHE:
                self._pinned.pop(next(iter(self._pinned)))
        return served

    def _load_pinned(self, name: str, version: int) -> Served:
        model = self.store.model(name)  # raises UnknownModel
        try:
            served = self._load(name, version)
        except _StaleBundle:
            raise UnknownVersion(
                f"model {name!r} potential v{version} was fitted to a bundle since replaced"
            ) from None
        except (BundleDamaged, *UNREADABLE) as exc:
            raise UnknownVersion(
                f"model {name!r} potential v{version} does not load: {exc}"
            ) from exc
        if served is None:
            raise UnknownVersion(
                f"model {name!r} has no potential version {version}; published versions are "
                f"1 to {model.published_version}"
                if model.published_version
                else f"model {name!r} has no published potential yet"
            )
        return served

    def served(self, name: str) -> Served | None:
        """What model ``name`` serves now, without polling or waiting (``None``: nothing)."""
        return self._served.get(name)

    def poll_if_due(self) -> None:
        """Refresh when the last poll is older than ``poll_interval`` (never waits on one).

        A catalogue that cannot be read is noted (:attr:`catalogue_error`) and what is loaded
        keeps being served.
        """
        if time.monotonic() - self._last_poll >= self.settings.poll_interval:
            self.try_refresh(blocking=False)

    def try_refresh(self, *, blocking: bool = True) -> None:
        """:meth:`refresh`, noting (not raising) a catalogue that cannot be read."""
        try:
            self.refresh(blocking=blocking)
        except CATALOGUE_ERRORS as exc:
            if self._catalogue_error != str(exc):
                log.error("catalogue read failed (serving what is loaded): %s", exc)
            self._catalogue_error = str(exc)

    def refresh(self, *, blocking: bool = True) -> list[tuple[str, int]]:
        """Load newly published potentials and swap them in; returns ``(model, version)`` swaps.

        With ``blocking=False`` a refresh already running elsewhere is not waited for.
        """
        if not self._refresh_lock.acquire(blocking=blocking):
            return []
        try:
            self._last_poll = time.monotonic()
            return self._refresh()
        finally:
            self._refresh_lock.release()

    def _refresh(self) -> list[tuple[str, int]]:
        models = self.store.catalog.models()
        self._models = {m.name: m for m in models}
        self._catalogue_error = None
        published = {m.name: m.published_version for m in models}
        current = self._served
        new = {k: v for k, v in current.items() if k in published}
        self._problems = {k: v for k, v in self._problems.items() if k in published}
        swaps = []
        for name, version in published.items():
            old = new.get(name)
            if old is not None:
                # Withdrawn (by another process, or a rebuilt catalogue) or damaged on disk.
                old = None if old.version > version else self._checked(old)
                if old is None:
                    del new[name]
                else:
                    new[name] = old
            if version == 0 or (old is not None and old.version >= version):
                continue
            served = self._newest_loadable(name, version, old.version if old else 0)
            if served is not None:
                new[name] = served
                swaps.append((name, served.version))
        if new.keys() != current.keys() or any(new[k] is not current[k] for k in new):
            self._served = new  # the atomic swap: one reference assignment
        for name, version in swaps:
            log.info("serving model %s potential v%d", name, version)
            if self.on_swap is not None:
                self.on_swap(name, version)
        return swaps

    def _checked(self, served: Served) -> Served | None:
        """A served version, or ``None`` when its file changed on disk and no longer loads.

        An unchanged file (same inode, size and time) is not read. A changed one that still
        loads (restored, touched) is kept with its new stamp; one that does not is reported
        as damaged (withdrawn, refit queued).
        """
        stamp = file_stamp(served.path) if served.path is not None else served.stamp
        if stamp == served.stamp or served.path is None:
            return served
        try:
            Potential.load(served.path, backend=self._backend)
        except UNREADABLE as exc:
            if self.store.catalog.potential(served.name, served.version) is None:
                return None  # deleted or replaced meanwhile, not damaged
            self._report_damage(served.name, served.version, f"{type(exc).__name__}: {exc}")
            return None
        log.warning(
            "model %s: potential v%d's file changed on disk and still loads; kept",
            served.name,
            served.version,
        )
        return replace(served, stamp=stamp)

    def _newest_loadable(self, name: str, published: int, served: int) -> Served | None:
        """The newest version in ``(served, published]`` that loads; damage is recorded once."""
        for version in range(published, served, -1):
            if (name, version) in self._damaged:
                continue
            try:
                loaded = self._load(name, version)
            except (UnknownModel, _StaleBundle):  # deleted or replaced meanwhile
                return None
            except BundleDamaged as exc:
                if self._problems.get(name) != str(exc):
                    log.error("model %s: %s", name, exc)
                self._problems[name] = str(exc)
                return None
            except UNREADABLE as exc:
                if self.store.catalog.potential(name, version) is None:
                    return None  # deleted or replaced meanwhile, not damaged
                self._report_damage(name, version, f"{type(exc).__name__}: {exc}")
                continue
            if loaded is not None and version == published:
                self._problems.pop(name, None)
            return loaded
        return None

    def _report_damage(self, name: str, version: int, reason: str) -> None:
        """Withdraw a damaged version in the catalogue (all processes fall back) and refit."""
        self._damaged[(name, version)] = reason
        log.error("model %s: potential v%d is damaged (%s)", name, version, reason)
        if self.store.read_only:
            self._problems[name] = (
                f"potential v{version} is damaged ({reason}); the store is read-only, so no "
                "refit: an older version is served if one loads"
            )
            return
        try:
            self.store.catalog.retract(name, version, reason)
            if self.on_damaged is not None:
                self.on_damaged(name, version)
        except Exception:  # a full store cannot record it: keep serving what loads
            log.exception("model %s: could not retract v%d or queue a refit", name, version)

    def problem(self, name: str) -> str | None:
        """What is wrong with model ``name`` (served degraded or not at all), or ``None``."""
        local = self._problems.get(name)
        if local is not None:
            return local
        try:
            damage = self.store.catalog.damage(name)
        except CATALOGUE_ERRORS:
            return None  # the catalogue's own problem is reported with the store's state
        if damage is None:
            return None
        version, reason = damage
        served = self._served.get(name)
        now = f"serving v{served.version}" if served else "no older version loads"
        return f"potential v{version} is damaged ({reason}); {now}; a refit is queued"

    def _load(self, name: str, version: int) -> Served | None:
        record = self.store.catalog.potential(name, version)
        if record is None:
            return None
        bundle = self._bundle(self.store.model(name), record.bundle_hash)
        path = self.store.root / record.path
        stamp = file_stamp(path)
        potential = self.store.load_potential(record, backend=self._backend)
        labels = None
        if bundle.labels is not None:
            labels = potential.cell_labels(bundle.labels)
        return Served(
            name=name,
            version=record.version,
            bundle=bundle,
            potential=potential,
            accuracy=record.accuracy,
            cell_labels=labels,
            path=path,
            stamp=stamp,
        )

    def _bundle(self, model: ModelRecord, bundle_hash: str) -> Bundle:
        if model.bundle_hash != bundle_hash:
            raise _StaleBundle("the potential belongs to a replaced bundle")
        key = (model.name, bundle_hash)
        if key not in self._bundles:
            failed = self._bad_bundles.get(key)
            if failed is not None and time.monotonic() - failed[0] < _BUNDLE_RETRY:
                raise BundleDamaged(failed[1])
            try:
                bundle = self.store.load_bundle(model.name, device=self._device)
            except ValueError as exc:
                message = f"its bundle does not load ({exc}); re-register the model"
                self._bad_bundles[key] = (time.monotonic(), message)
                raise BundleDamaged(message) from exc
            self._bad_bundles.pop(key, None)
            self._bundles = {k: v for k, v in self._bundles.items() if k[0] != model.name}
            self._bundles[key] = bundle
        return self._bundles[key]


class Poller:
    """A daemon thread that refreshes a :class:`ServingIndex` every ``interval`` seconds.

    ``tasks`` run before each refresh (the store's health checks); a failing one is logged
    and the loop goes on.
    """

    def __init__(
        self, index: ServingIndex, interval: float, tasks: Sequence[Callable[[], object]] = ()
    ) -> None:
        self._index = index
        self._interval = interval
        self._tasks = tuple(tasks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aeot-poller", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for task in self._tasks:
                try:
                    task()
                except Exception:  # keep polling: the next round tries again
                    log.exception("store check failed")
            try:
                self._index.try_refresh()
            except Exception:  # keep serving the current versions
                log.exception("catalogue poll failed")
            self._stop.wait(self._interval)
