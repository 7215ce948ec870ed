"""One job configuration: settings -> JobConfig -> the solver's configs, stored with the job."""

from __future__ import annotations

import json

import pytest

from service.job_config import JobConfig, job_config
from service.store import ModelStore
from solver import FitConfig, FixedThreshold, PotentialConfig
from tests.service_helpers import make_settings, write_bundle


def test_settings_reach_every_solver_setting(tmp_path):
    settings = make_settings(
        tmp_path / "store",
        fit_method="adam",
        target_l1=0.07,
        fit_seed=5,
        fit_max_iter=123,
        fit_time_budget=9.5,
        fit_newton={"growth": 2.0, "max_stage_iters": 4},
        fit_adam={"lr": 0.01},
        map_samples_per_cell=16,
        check_samples_per_cell=32,
        map_power=3.0,
        singular_rule="fixed:0.6",
    )
    config = job_config(settings)
    fit = config.fit
    assert (fit.method, fit.target_l1, fit.seed, fit.max_iter, fit.time_budget) == (
        "adam",
        0.07,
        5,
        123,
        9.5,
    )
    assert (fit.newton.growth, fit.newton.max_stage_iters, fit.adam.lr) == (2.0, 4, 0.01)
    assert config.potential == PotentialConfig(
        samples_per_cell=16,
        check_samples_per_cell=32,
        rule=FixedThreshold(radians=0.6),
        power=3.0,
    )
    assert config.seed == 5


def test_overrides_change_only_what_is_given(tmp_path):
    settings = make_settings(tmp_path / "store", target_l1=0.05, fit_seed=3)
    config = job_config(settings, target_l1=0.2, seed=None, max_iter=None)
    assert config.fit.target_l1 == 0.2 and config.fit.seed == 3
    assert config.fit.max_iter == settings.fit_max_iter
    with pytest.raises(ValueError, match="target_l1"):
        job_config(settings, target_l1=3.0)


def test_json_round_trip_and_the_first_catalogue_layout(tmp_path):
    settings = make_settings(tmp_path / "store", singular_rule="quantile:0.8", fit_method="adam")
    config = job_config(settings)
    assert JobConfig.from_json(config.to_json()) == config
    assert "backend" not in json.loads(config.to_json())["fit"]  # each worker uses its own
    old = '{"target_l1": 0.1, "seed": 4, "max_iter": 100000, "time_budget": null}'
    legacy = JobConfig.from_json(old)
    # Fitted by Monte Carlo Newton, the default of that layout's time (its checkpoints resume).
    assert legacy.fit == FitConfig(method="newton", target_l1=0.1, seed=4, max_iter=100000)
    assert legacy.potential == PotentialConfig()
    with pytest.raises(ValueError, match="rule must be one of"):
        bad = json.loads(config.to_json())
        bad["potential"]["rule"]["rule"] = "median"
        JobConfig.from_json(json.dumps(bad))


def test_a_queued_job_keeps_its_config_when_the_settings_change(tmp_path):
    settings = make_settings(tmp_path / "store", singular_rule="gap:0.7", map_samples_per_cell=8)
    store = ModelStore(settings.store)
    store.register("tiny", write_bundle(tmp_path / "b", n=20, d=2), fit=job_config(settings))
    changed = make_settings(tmp_path / "store", singular_rule="auto", map_samples_per_cell=64)
    (job,) = ModelStore(changed.store).queue.jobs("tiny")
    assert job.config == job_config(settings) != job_config(changed)
