"""The AE-OT HTTP service, its worker, store, client and command line."""

__all__: list[str] = []
