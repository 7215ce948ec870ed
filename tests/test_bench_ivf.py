"""bench/ivf.py: the approximate search's recall against the exact one."""

import numpy as np
import pytest

from bench.ivf import ivf_recall


def test_ivf_recall_is_exact_when_every_list_is_probed(rng):
    pytest.importorskip("faiss")
    y = rng.standard_normal((400, 4))
    h = -0.5 * np.square(y).sum(axis=1)
    x = rng.random((2000, 4)) - 0.5
    few, every = ivf_recall(y, h, x, lists=10, probes=[1, 10])
    assert every.top1 == 1.0 and every.top2 > 0.999  # float32 ties only
    assert few.top1 <= every.top1 and few.speedup > 0
