"""The one configuration of a fit job: built from the settings when queued, stored with the job.

A :class:`JobConfig` holds the solver's own configs, the :class:`solver.FitConfig` of the fit
and the :class:`solver.PotentialConfig` of every publication (check size, map samples, the
singular threshold rule, ...), so a job resumed by another worker, or after the settings
changed, fits and publishes exactly as it started. The catalogue stores it as JSON
(:meth:`JobConfig.to_json`); rows written before the potential settings were stored hold only
four fit fields and read back with the solver's potential defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from solver import AdamConfig, FitConfig, NewtonConfig, PotentialConfig, ThresholdRule, parse_rule

if TYPE_CHECKING:
    from service.settings import Settings

# Fields of the first catalogue rows (before fit method and potential settings were stored).
_LEGACY_FIELDS = {"target_l1", "seed", "max_iter", "time_budget"}


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """What a job asks of the solver.

    Attributes:
        fit: the fit's settings; its ``backend`` is not stored (each worker uses its own
            device's backend).
        potential: how each publication measures the heights and builds the extended map.

    """

    fit: FitConfig = field(default_factory=FitConfig)
    potential: PotentialConfig = field(default_factory=PotentialConfig)

    @property
    def seed(self) -> int:
        """The seed of every random stream of the job."""
        return self.fit.seed

    def to_json(self) -> str:
        """The catalogue's text form."""
        fit = self.fit.to_dict()
        fit.pop("backend")
        return json.dumps({"fit": fit, "potential": self.potential.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> JobConfig:
        """Read :meth:`to_json` output (or a row of the first catalogue layout).

        Raises:
            ValueError: unknown fields or values the solver rejects.

        """
        data = json.loads(text)
        if set(data) <= _LEGACY_FIELDS:
            # Those rows were fitted by the default of their time, Monte Carlo Newton; its
            # checkpoints resume only with that method.
            return cls(fit=FitConfig(method="newton", **data))
        # Rows written before the exact method carry no "exact" settings: its defaults.
        return cls(
            fit=FitConfig.from_dict(data["fit"]),
            potential=PotentialConfig.from_dict(data["potential"]),
        )


def job_config(
    settings: Settings, *, rule: ThresholdRule | None = None, **fit_overrides: Any
) -> JobConfig:
    """The config a job is queued with: the settings' fit and map values.

    Args:
        settings: the service settings.
        rule: the singular threshold rule (``None``: the settings' ``singular_rule``).
        **fit_overrides: :class:`solver.FitConfig` fields to change (``None`` values keep the
            settings' value), e.g. a refit request's ``target_l1``.

    Raises:
        ValueError: a value the solver rejects, naming it.

    """
    fit = FitConfig(
        method=settings.fit_method,
        target_l1=settings.target_l1,
        seed=settings.fit_seed,
        max_iter=settings.fit_max_iter,
        time_budget=settings.fit_time_budget,
        shard_targets=settings.fit_shard_targets,
        newton=NewtonConfig(**cast(dict[str, Any], settings.fit_newton)),
        adam=AdamConfig(**cast(dict[str, Any], settings.fit_adam)),
    )
    changes = {key: value for key, value in fit_overrides.items() if value is not None}
    potential = PotentialConfig(
        samples_per_cell=settings.map_samples_per_cell,
        check_samples_per_cell=settings.check_samples_per_cell,
        rule=parse_rule(settings.singular_rule) if rule is None else rule,
        power=settings.map_power,
        blend_margin=settings.map_blend_margin,
    )
    return JobConfig(fit=replace(fit, **changes), potential=potential)


def train_config(seed: int) -> JobConfig:
    """The config of a training job (only its seed is used)."""
    return JobConfig(fit=FitConfig(seed=seed))
