"""The AE-OT HTTP service, its worker, store, client and command line.

``create_app`` builds the FastAPI app; ``ModelStore`` holds bundles, potentials and the
catalogue; ``Worker`` fits OT maps in the background; ``AEOTClient`` talks to a server.
"""

import importlib

__all__ = ["AEOTClient", "AsyncAEOTClient", "ModelStore", "Settings", "Worker", "create_app"]

# Lazy: `import service` must not pull FastAPI, torch models and the solver in at once.
_MODULES = {
    "create_app": "app",
    "AEOTClient": "client",
    "AsyncAEOTClient": "client",
    "ModelStore": "store",
    "Settings": "settings",
    "Worker": "worker",
}


def __getattr__(name: str) -> object:
    if name not in _MODULES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"service.{_MODULES[name]}"), name)
