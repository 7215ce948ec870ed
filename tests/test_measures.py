import numpy as np
import pytest

from solver import SourceMeasure


@pytest.mark.parametrize("sampler", ["sobol", "random"])
@pytest.mark.parametrize("domain", ["centered", "unit"])
def test_samples_lie_in_cube_and_are_uniform(sampler, domain):
    source = SourceMeasure(dim=3, domain=domain, sampler=sampler)
    x = source.sample(20000, seed=7)
    assert x.shape == (20000, 3) and x.dtype == np.float32
    assert source.contains(x).all()
    centre = 0.0 if domain == "centered" else 0.5
    np.testing.assert_allclose(x.mean(axis=0), centre, atol=0.01)
    np.testing.assert_allclose(x.var(axis=0), 1 / 12, rtol=0.03)


@pytest.mark.parametrize("sampler", ["sobol", "random"])
def test_same_seed_same_points_and_batches_tile_the_stream(sampler):
    source = SourceMeasure(dim=4, sampler=sampler)
    whole = source.sample(10000, seed=3)
    np.testing.assert_array_equal(whole, source.sample(10000, seed=3))
    assert not np.array_equal(whole, source.sample(10000, seed=4))
    tiled = np.concatenate(list(source.batches(10000, seed=3, batch_size=777)))
    np.testing.assert_array_equal(tiled, whole)
    np.testing.assert_array_equal(source.sample(100, seed=3, start=5000), whole[5000:5100])


def test_bad_measures_are_refused():
    with pytest.raises(ValueError, match="dim"):
        SourceMeasure(dim=0)
    with pytest.raises(ValueError, match="domain"):
        SourceMeasure(dim=2, domain="ball")
    with pytest.raises(ValueError, match="sampler"):
        SourceMeasure(dim=2, sampler="halton")


@pytest.mark.parametrize("sampler", ["sobol", "random"])
def test_batches_are_the_stream_cut_in_pieces(sampler):
    source = SourceMeasure(dim=3, sampler=sampler)
    whole = source.sample(1000, seed=5)
    pieces = np.concatenate(list(source.batches(1000, seed=5, batch_size=96)))
    assert np.array_equal(whole, pieces)
    assert np.array_equal(source.sample(96, seed=5, start=192), pieces[192:288])
    later = np.concatenate(list(source.batches(300, seed=5, batch_size=96, start=450)))
    assert np.array_equal(later, whole[450:750])
