import numpy as np
import pytest

from solver import SourceMeasure, make_problem


def test_uniform_weights_by_default(rng):
    p = make_problem(rng.standard_normal((10, 3)))
    assert p.targets.dtype == np.float32 and p.targets.shape == (10, 3)
    np.testing.assert_allclose(p.weights, 0.1)
    np.testing.assert_array_equal(p.inverse, np.arange(10))


def test_duplicates_are_merged_with_summed_weight():
    y = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    v = np.array([0.1, 0.2, 0.3, 0.4])
    p = make_problem(y, v)
    np.testing.assert_array_equal(p.targets, [[0, 0], [1, 1], [2, 0]])
    np.testing.assert_allclose(p.weights, [0.4, 0.2, 0.4])
    np.testing.assert_array_equal(p.inverse, [0, 1, 0, 2])


def test_rows_equal_in_float32_are_one_target():
    # 1 and 1 + 1e-12 differ in float64; the fit's float32 targets could not tell them apart.
    y = np.array([[1.0, 0.0], [1.0 + 1e-12, 0.0], [0.0, 1.0]])
    p = make_problem(y)
    np.testing.assert_array_equal(p.targets, [[1, 0], [0, 1]])
    np.testing.assert_allclose(p.weights, [2 / 3, 1 / 3])
    np.testing.assert_array_equal(p.inverse, [0, 0, 1])


@pytest.mark.parametrize(
    ("targets", "weights", "message"),
    [
        (np.zeros((0, 2)), None, "non-empty"),
        (np.zeros(5), None, "shape"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), None, "NaN or inf"),
        (np.array([[0.0, np.inf], [1.0, 1.0]]), None, "NaN or inf"),
        (np.array([[0.0, 0.0], [1e39, 1.0]]), None, "float32's range .* 1 rows .*row 1"),
        (np.eye(2), np.array([1.5, -0.5]), "> 0"),
        (np.eye(2), np.array([0.3, 0.3]), "sum to 1"),
        (np.eye(2), np.array([1.0]), "shape"),
        (np.eye(2), np.array([np.nan, 0.5]), "NaN"),
        (np.array([["a", "b"]]), None, "numeric"),
    ],
)
def test_bad_input_raises_clear_value_error(targets, weights, message):
    with pytest.raises(ValueError, match=message):
        make_problem(targets, weights)


def test_dimension_mismatch_with_source():
    with pytest.raises(ValueError, match="dim 3"):
        make_problem(np.zeros((4, 2)) + np.arange(4)[:, None], source=SourceMeasure(dim=3))
