"""The one settings object of the service, read from ``AEOT_*`` environment variables.

Every tunable of the server, the worker and the CLI lives here with its default and a one-line
reason; ``docs/service.md`` lists them as a table. Tests build ``Settings(store=tmp_path, ...)``
directly instead of touching the environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from solver import DEFAULT_BLEND_MARGIN, AdamConfig, NewtonConfig, parse_rule

Device = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
FitMethod = Literal["auto", "exact", "newton", "adam"]
# Variables of earlier releases whose meaning moved into one setting: refused, not ignored, so a
# deployment that set them does not silently fall back to the default singular rule.
_RETIRED = {
    "AEOT_SINGULAR_THRESHOLD": "AEOT_SINGULAR_RULE=fixed:<radians>",
    "AEOT_SINGULAR_QUANTILE": "AEOT_SINGULAR_RULE=quantile:<q>",
}
# Host names of a loopback bind (DNS rebinding: a public name resolving to 127.0.0.1 is refused).
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


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

    # Uploads: the digits bundle is ~0.3 MB and an MNIST conv bundle ~60 MB unpacked (13 M
    # parameters); the caps refuse archive bombs and absurd architectures before allocation.
    max_bundle_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="unpacked size of an uploaded bundle"
    )
    max_bundle_members: int = Field(default=32, ge=4, description="files in an uploaded archive")
    max_parameters: int = Field(
        default=50_000_000, ge=1, description="autoencoder parameters of an uploaded bundle"
    )

    # Connections and abuse. Loopback servers answer only loopback Host names by default, so a
    # web page cannot reach them through DNS rebinding; list public names when binding wider.
    allowed_hosts: tuple[str, ...] | None = Field(
        default=None,
        description="Host header names answered ('*' any); default: loopback names on a "
        "loopback bind, else any",
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="seconds a request body may stall before a 408"
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, description="seconds an idle keep-alive connection stays open"
    )
    auth_max_failures: int = Field(
        default=10, ge=1, description="wrong API keys per client per auth_window before a 429"
    )
    auth_window: float = Field(default=60.0, gt=0, description="seconds of the failed-key window")
    # Anyone can send X-Forwarded-For: it names the client only when a proxy of ours wrote it.
    forwarded_allow_ips: tuple[str, ...] = Field(
        default=(),
        description="reverse proxies (addresses or networks, JSON list) whose X-Forwarded-For "
        "and X-Forwarded-Proto are trusted; default none: the client is the connection's peer",
    )

    # Threads: on the 2-core test machine OpenMP teams spinning on busy cores made a 64-sample
    # /sample 10x slower (17 -> 1.7 ms) and the digits fit 3x slower (60 -> 19 s) than one
    # thread; a server gets its parallelism from concurrent requests (or AEOT_WEB_WORKERS).
    request_threads: int = Field(
        default=1, ge=1, description="torch and BLAS threads of each server process"
    )
    worker_threads: int = Field(
        default=1, ge=1, description="torch and BLAS threads of the fit worker (raise on big hosts)"
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
    fit_method: FitMethod = Field(
        default="auto",
        description="auto (default: exact in 2D/3D, newton otherwise), exact, newton or adam",
    )
    fit_seed: int = Field(default=0, ge=0)
    # The service fits until the target (or the time budget): iterations are a safety net
    # here, not the budget they are for a direct solver call (FitConfig's default 1000).
    fit_max_iter: int = Field(default=100000, ge=1)
    fit_time_budget: float | None = Field(default=None, gt=0)
    fit_shard_targets: bool | None = Field(
        default=None,
        description="split the targets over the ranks of a torchrun fit (unset: above 1 GiB)",
    )
    fit_newton: dict[str, int | float] = Field(
        default_factory=dict, description='Newton settings as JSON, e.g. {"growth": 2}'
    )
    fit_adam: dict[str, int | float] = Field(
        default_factory=dict, description='Adam baseline settings as JSON, e.g. {"lr": 0.01}'
    )
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
    map_power: float | None = Field(
        default=None, gt=0, description="Shepard power of the extended map (unset: max(1, d-1))"
    )
    map_blend_margin: float = Field(
        default=DEFAULT_BLEND_MARGIN,
        gt=0,
        le=1,
        description="the extended map blends a regular neighbour when its pair's score is at most "
        "this share of the singular threshold (1: every regular facet)",
    )
    singular_rule: str = Field(
        default="auto",
        validate_default=True,
        description="singular threshold: auto (gap rule; without a clear gap, as many pairs as "
        "join two spectral clusters of the latents), gap[:min_regular], quantile[:q], "
        "fixed:radians or clusters",
    )
    poll_interval: float = Field(
        default=1.0, gt=0, description="seconds between catalogue polls (worker queue, index swap)"
    )
    stale_seconds: float = Field(
        default=30.0, gt=0, description="a running job with no heartbeat for this long is reclaimed"
    )
    keep_checkpoints: int = Field(
        default=2, ge=0, description="checkpoints of finished fit jobs kept per model"
    )
    # At least the fit attempts of one bundle (3): the retry count is read from these rows.
    job_history: int = Field(
        default=50, ge=3, description="finished jobs kept per model in the catalogue"
    )

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"

    @field_validator("singular_rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        retired = [f"{name} (now {new})" for name, new in _RETIRED.items() if name in os.environ]
        if retired:
            raise ValueError(f"retired variables are set: {', '.join(retired)}")
        parse_rule(value)  # raises ValueError naming the accepted forms
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"forwarded_allow_ips: {entry!r} is not an IP address or network "
                    "(e.g. 10.0.0.2 or 10.0.0.0/24; trusting every peer would let any client "
                    "choose its address)"
                ) from None
        return value

    @field_validator("fit_newton", "fit_adam", "forwarded_allow_ips", mode="before")
    @classmethod
    def _json_text(cls, value: object) -> object:
        """Accept the JSON text ``to_env`` writes, also when passed as an argument."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("fit_newton", "fit_adam")
    @classmethod
    def _known_fields(
        cls, value: dict[str, int | float], info: ValidationInfo
    ) -> dict[str, int | float]:
        kind = NewtonConfig if info.field_name == "fit_newton" else AdamConfig
        try:
            kind(**cast(dict[str, Any], value))
        except TypeError as exc:
            raise ValueError(f"{info.field_name}: {exc}") from exc
        return value

    def mutations_enabled(self) -> bool:
        """Whether an API key is configured (without one, mutating endpoints answer 403)."""
        return self.api_key is not None and bool(self.api_key.get_secret_value())

    def host_names(self) -> tuple[str, ...]:
        """The Host names this server answers (``("*",)``: any)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if self.host in _LOOPBACK:
            return _LOOPBACK
        return ("*",)

    def to_env(self) -> dict[str, str]:
        """Export these settings as ``AEOT_*`` variables (how the server configures its worker)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, tuple | list):
                value = list(value)  # pydantic-settings reads JSON for sequences
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            env[f"AEOT_{name.upper()}"] = text
        return env
