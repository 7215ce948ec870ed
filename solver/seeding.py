"""Independent, reproducible seeds for the fit's sample streams."""

from __future__ import annotations

import numpy as np


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed that depends only on ``seed`` and ``keys`` (stream purpose, stage, ...).

    Distinct keys give statistically independent streams (numpy's SeedSequence hashing), so
    the fit's stages and its independent checks never reuse each other's samples.
    """
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0] >> 1)
