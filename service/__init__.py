"""The AE-OT HTTP service, its worker, store, client and command line.

``create_app`` builds the FastAPI app; ``ModelStore`` holds bundles, potentials and the
catalogue; ``Worker`` fits OT maps in the background; ``AEOTClient`` talks to a server.
"""

__all__ = ["AEOTClient", "AsyncAEOTClient", "ModelStore", "Settings", "Worker", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy: `import service` must not pull FastAPI, torch models and the solver in at once.
    if name == "create_app":
        from service.app import create_app

        return create_app
    if name in ("AEOTClient", "AsyncAEOTClient"):
        from service import client

        return getattr(client, name)
    if name == "ModelStore":
        from service.store import ModelStore

        return ModelStore
    if name == "Settings":
        from service.settings import Settings

        return Settings
    if name == "Worker":
        from service.worker import Worker

        return Worker
    raise AttributeError(name)
