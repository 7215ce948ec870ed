"""Several processes for one fit: ``torchrun --nproc-per-node K aeot fit NAME`` (or ``worker``).

Rank 0 leads: it runs the command as usual (catalogue, checkpoints, publication) and its
fits use the distributed Monte Carlo estimator (``FitConfig(estimator="auto")``). Every other
rank only follows the lead's fits (:func:`solver.follow_fit`), sharing each Monte Carlo pass,
until the lead releases it. gloo joins CPU processes, NCCL one GPU per rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist

from solver import follow_fit, release_followers


def launched_ranks() -> int:
    """World size set by ``torchrun`` (``WORLD_SIZE``); 1 when launched as a single process."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError as exc:
        raise ValueError(f"WORLD_SIZE must be an integer, got {value!r}") from exc
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    return world


def lead_or_follow(lead: Callable[[], None]) -> int | None:
    """Run ``lead`` here, or, under ``torchrun`` with several ranks, lead or follow its fits.

    Args:
        lead: the command's body (runs on rank 0 only when there are several ranks).

    Returns:
        On a following rank, the number of fits it followed; ``None`` where ``lead`` ran.

    """
    if launched_ranks() == 1:
        lead()
        return None
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        if dist.get_rank() == 0:
            try:
                lead()
            finally:
                release_followers()
            return None
        followed = 0
        while follow_fit() is not None:
            followed += 1
        return followed
    finally:
        dist.destroy_process_group()
