"""The serving index: the latest published potential of each model, swapped atomically.

A :class:`Served` object holds everything a request needs (decoder, potential, version) and
never changes after it is built. :class:`ServingIndex` keeps a dict of them; a refresh builds
every new object completely and then replaces the dict with one assignment, so a request that
took its ``Served`` at the start sees one potential version from start to end, whatever swaps
happen meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models import Bundle, resolve_device
from service.catalog import ModelRecord
from service.errors import NotReady
from service.settings import Settings
from service.store import ModelStore, UnknownModel
from solver import AccuracyReport, ExtendedMap, Potential, backend_for_device

log = logging.getLogger("aeot.serving")


@dataclass(frozen=True, kw_only=True)
class Served:
    """One model at one potential version, ready to answer requests.

    Attributes:
        name: model name.
        version: potential version (increases with every publication).
        bundle: decoder and training latents.
        potential: the fitted potential of this version (heights, extended map, ...).
        accuracy: the independent accuracy check the version was published with.

    """

    name: str
    version: int
    bundle: Bundle
    potential: Potential
    accuracy: AccuracyReport | None

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


class ServingIndex:
    """Latest published potential per model, refreshed by polling the catalogue.

    Args:
        store: the model store.
        settings: device and poll interval.
        on_swap: called with ``(model, version)`` after each swap (metrics).

    """

    def __init__(
        self,
        store: ModelStore,
        settings: Settings,
        on_swap: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_swap = on_swap
        self._served: dict[str, Served] = {}
        self._bundles: dict[tuple[str, str], Bundle] = {}
        self._refresh_lock = threading.Lock()
        self._last_poll = -np.inf
        self._device = resolve_device(settings.device)
        self._backend = backend_for_device(self._device)

    def get(self, name: str) -> Served:
        """Return the served object of model ``name``.

        Raises:
            UnknownModel: no such model. NotReady: no potential published (or loaded) yet.

        """
        served = self.current(name)
        if served is not None:
            return served
        self.store.model(name)  # raises UnknownModel
        raise NotReady(
            f"model {name!r} has no fitted potential yet; see /models/{name} for fit progress",
            retry_after=max(self.settings.poll_interval, 5.0),
        )

    def current(self, name: str) -> Served | None:
        """Return what model ``name`` serves now, or ``None`` (nothing published or unknown).

        Polls when due; when nothing is loaded yet, waits for a refresh in progress elsewhere
        (the poller may be loading the first version) instead of answering not ready.
        """
        self.poll_if_due()
        served = self._served.get(name)  # one read of one reference: a consistent version
        if served is None:
            self.refresh(blocking=True)
            served = self._served.get(name)
        return served

    def poll_if_due(self) -> None:
        """Refresh when the last poll is older than ``poll_interval`` (never waits on one)."""
        if time.monotonic() - self._last_poll >= self.settings.poll_interval:
            self.refresh(blocking=False)

    def versions(self) -> dict[str, int]:
        """``{model: served version}``."""
        return {name: s.version for name, s in self._served.items()}

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
        published = self.store.published_versions()
        current = self._served
        new = {k: v for k, v in current.items() if k in published}
        swaps = []
        for name, version in published.items():
            old = current.get(name)
            if version == 0 or (old is not None and old.version >= version):
                continue
            try:
                served = self._load(name)
            except (UnknownModel, OSError, ValueError) as exc:  # deleted or replaced meanwhile
                log.warning("model %s v%d not loaded: %s", name, version, exc)
                continue
            if served is not None:
                new[name] = served
                swaps.append((name, served.version))
        if swaps or len(new) != len(current):
            self._served = new  # the atomic swap: one reference assignment
        for name, version in swaps:
            log.info("serving model %s potential v%d", name, version)
            if self.on_swap is not None:
                self.on_swap(name, version)
        return swaps

    def _load(self, name: str) -> Served | None:
        record = self.store.potential_record(name)
        if record is None:
            return None
        bundle = self._bundle(self.store.model(name), record.bundle_hash)
        return Served(
            name=name,
            version=record.version,
            bundle=bundle,
            potential=self.store.load_potential(record, backend=self._backend),
            accuracy=record.accuracy,
        )

    def _bundle(self, model: ModelRecord, bundle_hash: str) -> Bundle:
        if model.bundle_hash != bundle_hash:
            raise ValueError("the potential belongs to a replaced bundle")
        key = (model.name, bundle_hash)
        if key not in self._bundles:
            self._bundles = {k: v for k, v in self._bundles.items() if k[0] != model.name}
            self._bundles[key] = self.store.load_bundle(model.name, device=self._device)
        return self._bundles[key]


class Poller:
    """A daemon thread that refreshes a :class:`ServingIndex` every ``interval`` seconds."""

    def __init__(self, index: ServingIndex, interval: float) -> None:
        self._index = index
        self._interval = interval
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
            try:
                self._index.refresh()
            except Exception:  # keep serving the current versions
                log.exception("catalogue poll failed")
            self._stop.wait(self._interval)
