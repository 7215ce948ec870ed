"""The one settings object of the service, read from ``AEOT_*`` environment variables.

Every tunable of the server, the worker and the CLI lives here with its default and a one-line
reason; ``docs/service.md`` lists them as a table. Tests build ``Settings(store=tmp_path, ...)``
directly instead of touching the environment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
SingularRule = Literal["fixed", "quantile", "gap"]


class Settings(BaseSettings):
    """Service configuration (environment prefix ``AEOT_``, e.g. ``AEOT_PORT=9000``)."""

    model_config = SettingsConfigDict(env_prefix="AEOT_", frozen=True, extra="ignore")

    # Network: loopback by default, so a fresh `aeot serve` is not reachable from outside.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    store: Path = Field(default=Path("store"), description="model store directory")
    api_key: SecretStr | None = Field(
        default=None, description="key for mutating endpoints (X-API-Key); unset disables them"
    )
    require_key_for_reads: bool = False
    data_root: Path | None = Field(
        default=None,
        description="folder the API may train from (dataset names relative to it); unset: none",
    )
    device: Device = "auto"

    # Request limits: a 4096 x 64 float32 response is 1 MiB; PNG grids cost a decode per image.
    max_n: int = Field(default=4096, ge=1)
    max_images: int = Field(default=256, ge=1)
    max_steps: int = Field(default=256, ge=2)
    max_pairs: int = Field(default=10000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # Threads: on the 2-core test machine OpenMP teams spinning on busy cores made a 64-sample
    # /sample 10x slower (17 -> 1.7 ms) and the digits fit 3x slower (60 -> 19 s) than one
    # thread; a server gets its parallelism from concurrent requests (or AEOT_WEB_WORKERS).
    request_threads: int = Field(
        default=1, ge=1, description="torch/OpenMP threads of each server process"
    )
    worker_threads: int = Field(
        default=1, ge=1, description="torch/OpenMP threads of the fit worker (raise on big hosts)"
    )

    web_workers: int = Field(
        default=1,
        ge=1,
        description="server processes (each loads the served models; one fit worker in all)",
    )

    # Worker.
    worker: bool = Field(default=True, description="start the fit worker process with the server")
    default_model: str = "digits"
    embedded_default: bool = Field(
        default=True, description="train the digits model when the store has no model"
    )
    target_l1: float = Field(
        default=0.05, gt=0, lt=2, description="fit stops at this independent L1"
    )
    fit_seed: int = Field(default=0, ge=0)
    fit_max_iter: int = Field(default=100000, ge=1)
    fit_time_budget: float | None = Field(default=None, gt=0)
    checkpoint_every: int = Field(default=5, ge=1, description="iterations between fit checkpoints")
    publish_interval: float = Field(
        default=10.0, ge=0, description="seconds between publications of improved potentials"
    )
    check_samples_per_cell: int = Field(
        default=64, ge=1, description="samples per cell of the worker's own independent L1 check"
    )
    map_samples_per_cell: int = Field(
        default=64, ge=1, description="samples per cell to estimate adjacency and mass centres"
    )
    # Unset rule: the solver's choice, "fixed" with a threshold, else "gap" (the largest jump of
    # the adjacent-pair angles) when that jump is clear, the median of the angles when not.
    singular_rule: SingularRule | None = Field(
        default=None, description="singular facet rule: fixed, quantile or gap (see solver)"
    )
    singular_quantile: float = Field(default=0.9, gt=0, lt=1)
    singular_threshold: float | None = Field(
        default=None, gt=0, lt=math.pi, description="dihedral angle threshold (radians), rule=fixed"
    )
    poll_interval: float = Field(
        default=1.0, gt=0, description="seconds between catalogue polls (worker queue, index swap)"
    )
    stale_seconds: float = Field(
        default=30.0, gt=0, description="a running job with no heartbeat for this long is reclaimed"
    )

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"

    @model_validator(mode="after")
    def _rule_matches_threshold(self) -> Settings:
        fixed = self.singular_rule == "fixed" or (
            self.singular_rule is None and self.singular_threshold is not None
        )
        if fixed and self.singular_threshold is None:
            raise ValueError("singular_rule 'fixed' needs singular_threshold (radians)")
        if not fixed and self.singular_threshold is not None:
            raise ValueError(
                f"singular_threshold is only used by rule 'fixed', not {self.singular_rule!r}"
            )
        return self

    def mutations_enabled(self) -> bool:
        """Whether an API key is configured (without one, mutating endpoints answer 403)."""
        return self.api_key is not None and bool(self.api_key.get_secret_value())

    def to_env(self) -> dict[str, str]:
        """Export these settings as ``AEOT_*`` variables (how the server configures its worker)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"AEOT_{name.upper()}"] = str(value)
        return env
