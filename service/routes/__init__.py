"""HTTP routers: generation, models, system."""

__all__ = ["generate", "models", "system"]
