"""Training throughput: the previous trainer's steps against today's, side by side.

Each arm trains one joint epoch and one decoder-only epoch of the conv autoencoder (d = 32)
over the same window of images (``--window``: 25,600 images, 200 steps of 128), and the arms
take turns, window after window (``--rounds``), so that on a shared machine every arm sees the
same load. The seconds of both epochs are scaled to the full recipe: its joint and decoder
epochs (30 + 10 for 28x28 images) over 60,000 images.

Arms (``--arms``):

- ``previous``: the trainer as it was before this benchmark, reproduced in this file: float32,
  batches of 128, Adam's loop over the parameters, NCHW images, a host sync per step;
- ``float32-128``: today's loop on the previous recipe (float32, batches of 128, step 3e-3);
- ``bfloat16-128``: the same with bfloat16 autocast;
- ``recipe-float32``: today's conv recipe (``TrainPlan.resolve``) in float32, as on a CPU
  without native bfloat16;
- ``recipe``: today's conv recipe as a plan resolves it (precision ``auto``);
- ``recipe-glibc-heap``: the same with glibc's own heap thresholds instead of the trainer's
  retained heap (``models.runtime.retained_heap``). Compare it with ``recipe`` in separate
  processes (``--arms recipe-glibc-heap`` and ``--arms recipe``, taking turns): the first arm
  to leave a retained heap sets the thresholds of the rest of its process.

Every arm runs at each thread count of ``--threads``. ``--profile N`` first profiles N steps of
each arm (after two warm-up steps) and splits a step's time into data (the batch gather),
forward (with the loss), backward and optimizer (Adam and clearing the gradients).

Prints one JSON object per line: the setup, the profiles, one row per window and arm (wall
seconds of each epoch; ``cpu_seconds``, the process's CPU time for the whole window with model
set-up and the trainer's evaluation passes, a check on wall times inflated by other jobs, with
``system_seconds`` and ``page_faults``, the part spent in the kernel and the minor page faults
behind most of it), and a
summary per arm (median seconds per epoch of 60,000 images and for the full recipe, and the
speed-up over ``previous`` at the same thread count, overall and per round).

    python bench/train_speed.py /data/mnist --threads 1,2 --rounds 3 --profile 8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.autograd.profiler_util import FunctionEvent

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from models import (
    AutoencoderConfig,
    ImageDataset,
    TrainConfig,
    TrainPlan,
    build_autoencoder,
    cpu_threads,
    dataset_config_for,
    load_plan_data,
    train_autoencoder,
)
from models import train as train_module
from models.runtime import native_bfloat16, resolve_precision

FULL_IMAGES = 60_000  # the recipe is timed on all of MNIST's training images
ARMS = ("previous", "float32-128", "bfloat16-128", "recipe-float32", "recipe", "recipe-glibc-heap")

Arm = Callable[[ImageDataset, AutoencoderConfig, TrainConfig, bool], tuple[float, float]]


def previous_trainer(
    data: ImageDataset, model_config: AutoencoderConfig, config: TrainConfig, joint_only: bool
) -> tuple[float, float]:
    """One joint and one decoder epoch as the trainer ran them before: seconds of each."""
    images = torch.from_numpy(data.images)
    model = build_autoencoder(model_config, seed=config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    batch = config.batch_size
    order = [torch.arange(lo, lo + batch) for lo in range(0, len(images) - batch + 1, batch)]
    model.train()
    started = time.perf_counter()
    for idx in order:
        x = images[idx]
        loss = nn.functional.mse_loss(model(x)[0], x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    joint = time.perf_counter() - started
    if joint_only:
        return joint, 0.0
    model.encoder.eval()
    model.encoder.requires_grad_(False)
    with torch.no_grad():
        latents = model.encoder(images)
    started = time.perf_counter()
    for idx in order:
        loss = nn.functional.mse_loss(model.decoder(latents[idx]), images[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return joint, time.perf_counter() - started


def todays_trainer(
    data: ImageDataset, model_config: AutoencoderConfig, config: TrainConfig, joint_only: bool
) -> tuple[float, float]:
    """One joint and one decoder epoch of :func:`models.train_autoencoder`: seconds of each."""
    if joint_only:  # a second joint epoch that never comes: no freeze, no evaluation
        config = replace(config, max_joint_epochs=2, decoder_epochs=1, progress=False)
        result = train_autoencoder(data, model_config, config, callback=lambda r: False)
        return result.metrics.history[0].seconds, 0.0
    config = replace(config, max_joint_epochs=1, decoder_epochs=1, progress=False)
    history = train_autoencoder(data, model_config, config).metrics.history
    return history[0].seconds, history[1].seconds


def glibc_heap_trainer(
    data: ImageDataset, model_config: AutoencoderConfig, config: TrainConfig, joint_only: bool
) -> tuple[float, float]:
    """:func:`todays_trainer` with glibc's heap thresholds left as they are."""
    with mock.patch.object(train_module, "retained_heap", contextlib.nullcontext):
        return todays_trainer(data, model_config, config, joint_only)


def arm_config(name: str, recipe: TrainConfig) -> tuple[Arm, TrainConfig]:
    """The trainer and recipe of an arm."""
    paper = replace(
        recipe, batch_size=128, lr=3e-3, joint_schedule="constant", decoder_schedule="constant"
    )
    arms: dict[str, tuple[Arm, TrainConfig]] = {
        "previous": (previous_trainer, replace(paper, precision="float32")),
        "float32-128": (todays_trainer, replace(paper, precision="float32")),
        "bfloat16-128": (todays_trainer, replace(paper, precision="bfloat16")),
        "recipe-float32": (todays_trainer, replace(recipe, precision="float32")),
        "recipe": (todays_trainer, recipe),
        "recipe-glibc-heap": (glibc_heap_trainer, recipe),
    }
    if name not in arms:
        raise ValueError(f"unknown arm {name!r}; known: {ARMS}")
    return arms[name]


def _category(event: FunctionEvent) -> str:
    """Which part of a step a top-level profiler event belongs to."""
    if event.name.startswith("autograd::engine") or "backward" in event.name.lower():
        return "backward"
    if event.name.startswith("Optimizer.") or event.name.startswith("Optimizer#"):
        return "optimizer"
    if event.name in ("aten::zero_", "aten::fill_"):  # clearing gradients left as tensors
        return "optimizer"
    if event.name in ("aten::index", "aten::randperm", "aten::contiguous", "aten::clone"):
        return "data"
    return "forward"


def profile_steps(
    run: Arm, data: ImageDataset, model_config: AutoencoderConfig, config: TrainConfig, steps: int
) -> dict[str, float]:
    """Milliseconds per joint step in data, forward, backward and optimizer (profiler)."""
    window = data.subset(steps * config.batch_size, seed=config.seed)
    # warm-up steps outside the profile: oneDNN builds its kernels on first use
    run(data.subset(2 * config.batch_size, seed=config.seed), model_config, config, True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(window, model_config, config, True)
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.cpu_parent is None:
            part = _category(event)
            totals[part] = totals.get(part, 0.0) + event.time_range.elapsed_us()
    return {k: round(v / 1e3 / steps, 2) for k, v in sorted(totals.items())}


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default="mnist", help="as for `aeot train`")
    parser.add_argument("--window", type=int, default=25_600, help="images per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plan = TrainPlan(data=dataset_config_for(args.data), subset=args.window, seed=args.seed)
    window = load_plan_data(plan)
    model_config, recipe = plan.resolve(window.image_shape)
    recipe = replace(recipe, device="cpu", threads=None)
    arms = {name: arm_config(name, recipe) for name in args.arms.split(",")}
    threads = [int(t) for t in args.threads.split(",")]
    emit(
        {
            "kind": "setup",
            "data": window.name,
            "window_images": len(window),
            "model": model_config.to_dict(),
            "recipe_epochs": [recipe.max_joint_epochs, recipe.decoder_epochs],
            "arms": {
                name: {
                    "batch_size": c.batch_size,
                    "lr": c.lr,
                    "precision": resolve_precision(c.precision, "cpu"),
                }
                for name, (_, c) in arms.items()
            },
            "native_bfloat16": native_bfloat16("cpu"),
            "threads": threads,
            "machine": machine_info(),
            "load_average": os.getloadavg(),
        }
    )
    if args.profile:
        for t in threads:
            for name, (run, config) in arms.items():
                with cpu_threads(t):
                    ms = profile_steps(run, window, model_config, config, args.profile)
                per_image = {k: round(v / config.batch_size, 4) for k, v in ms.items()}
                emit(
                    {
                        "kind": "profile",
                        "arm": name,
                        "threads": t,
                        "batch_size": config.batch_size,
                        "ms_per_step": ms,
                        "ms_per_image": per_image,
                    }
                )
    seconds: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for t in threads:
            for name, (run, config) in arms.items():
                usage = resource.getrusage(resource.RUSAGE_SELF)
                with cpu_threads(t):
                    joint, decoder = run(window, model_config, config, False)
                after = resource.getrusage(resource.RUSAGE_SELF)
                user = after.ru_utime - usage.ru_utime
                system = after.ru_stime - usage.ru_stime
                seconds.setdefault((name, t), []).append((joint, decoder))
                emit(
                    {
                        "kind": "window",
                        "round": round_,
                        "arm": name,
                        "threads": t,
                        "joint_seconds": round(joint, 3),
                        "decoder_seconds": round(decoder, 3),
                        "cpu_seconds": round(user + system, 3),
                        "system_seconds": round(system, 3),
                        "page_faults": after.ru_minflt - usage.ru_minflt,
                        "load_average": os.getloadavg(),
                    }
                )
    epochs = (recipe.max_joint_epochs, recipe.decoder_epochs)
    for (name, t), rows in seconds.items():
        emit(_summary(name, t, rows, seconds.get(("previous", t)), epochs, len(window)))
    emit({"kind": "end", "load_average": os.getloadavg()})


def _summary(
    name: str,
    threads: int,
    rows: list[tuple[float, float]],
    base: list[tuple[float, float]] | None,
    epochs: tuple[int, int],
    window: int,
) -> dict:
    """An arm's median epoch times, full-recipe minutes and speed-up over ``previous``."""
    scale = FULL_IMAGES / window

    def full(joint: float, decoder: float) -> float:
        return (epochs[0] * joint + epochs[1] * decoder) * scale

    joint = statistics.median(r[0] for r in rows)
    decoder = statistics.median(r[1] for r in rows)
    row: dict = {
        "kind": "summary",
        "arm": name,
        "threads": threads,
        "joint_epoch_seconds": round(joint * scale, 1),
        "decoder_epoch_seconds": round(decoder * scale, 1),
        "full_recipe_minutes": round(full(joint, decoder) / 60, 1),
    }
    if base:
        base_joint = statistics.median(b[0] for b in base)
        base_decoder = statistics.median(b[1] for b in base)
        row["speedup"] = round(full(base_joint, base_decoder) / full(joint, decoder), 2)
        row["speedup_per_round"] = [
            round(full(*b) / full(*r), 2) for b, r in zip(base, rows, strict=True)
        ]
    return row


if __name__ == "__main__":
    main()
