"""analysis/predictors.py against hand-computed values and a synthetic power law with known parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from laggrow.analysis.predictors import (
    PREDICTORS,
    WINDOW,
    extrapolate,
    get_predictor,
    predictor_names,
    score_curves,
)
from laggrow.errors import LaggrowError


def predict(name: str, steps, losses, final_step: int = 100) -> float:
    return get_predictor(name).fn(np.asarray(steps), np.asarray(losses, dtype=float), final_step)


def test_the_registry():
    assert predictor_names() == ["loss", "window", "slope", "extrapolate"]
    assert {n: p.kind for n, p in PREDICTORS.items()} == {
        "loss": "predicted loss", "window": "predicted loss", "slope": "score", "extrapolate": "predicted loss"}
    assert all(p.name == n and p.summary for n, p in PREDICTORS.items())


def test_unknown_name_is_refused_in_one_line():
    with pytest.raises(LaggrowError) as e:
        get_predictor("x")
    assert str(e.value) == "predictor 'x': unknown (expected one of: loss, window, slope, extrapolate)"
    with pytest.raises(LaggrowError, match="predictor 'median': unknown"):
        score_curves(np.array([0, 1]), np.ones((2, 2)), 10, "median")


def test_loss_is_the_last_loss():
    assert predict("loss", [0, 5, 10], [3.0, 2.5, 2.25]) == 2.25
    assert predict("loss", [7], [4.5]) == 4.5


def test_window_is_the_mean_of_the_last_three():
    assert WINDOW == 3
    # (1.9 + 2.05 + 1.95) / 3 = 5.9 / 3
    assert predict("window", [0, 1, 2, 3, 4], [2.0, 2.1, 1.9, 2.05, 1.95]) == pytest.approx(5.9 / 3, abs=1e-12)
    assert predict("window", [0, 4], [2.0, 2.2]) == pytest.approx(2.1, abs=1e-12)  # fewer than W: all of them
    assert predict("window", [3], [1.25]) == 1.25


def test_window_is_less_noisy_than_the_last_loss():
    # constant 2.0 plus N(0, 0.05) noise: the mean of 3 has sd 0.05 / sqrt(3), a ratio of 0.577 to the last loss
    rng = np.random.default_rng(0)
    steps = np.arange(10)
    draws = 2.0 + rng.normal(0.0, 0.05, size=(2000, 10))
    last = np.array([predict("loss", steps, d) for d in draws])
    window = np.array([predict("window", steps, d) for d in draws])
    ratio = window.std() / last.std()
    assert 0.5 < ratio < 0.66
    assert window.mean() == pytest.approx(2.0, abs=0.005)  # 5 sd of the mean of 2000 window means


def test_slope_is_the_least_squares_slope_of_the_last_three_points():
    # the last three points (20, 2.8), (30, 2.6), (40, 2.4) lie on a line of slope -0.02; the first two do not
    assert predict("slope", [0, 10, 20, 30, 40], [5.0, 3.0, 2.8, 2.6, 2.4]) == pytest.approx(-0.02, abs=1e-12)
    # not on a line: (0, 3), (1, 1), (2, 2) -> sum(dt*dy) / sum(dt^2) = ((-1)(1) + 0 + (1)(0)) / 2 = -0.5
    assert predict("slope", [0, 1, 2], [3.0, 1.0, 2.0]) == pytest.approx(-0.5, abs=1e-12)
    assert predict("slope", [0, 4], [2.0, 1.0]) == pytest.approx(-0.25, abs=1e-12)
    assert predict("slope", [5], [2.0]) == 0.0


POWER_STEPS = np.arange(0, 33, 2)
TRUE_AT_256 = 1.5 + 2 * 257 ** -0.5  # a = 1.5, b = 2, c = 0.5 at t = 256


def power_law(t):
    return 1.5 + 2 * (np.asarray(t, dtype=float) + 1) ** -0.5


def test_extrapolate_recovers_an_exact_power_law():
    assert extrapolate(POWER_STEPS, power_law(POWER_STEPS), 256) == pytest.approx(TRUE_AT_256, abs=1e-3)


def test_extrapolate_with_small_noise_beats_the_last_loss():
    # noise sd 0.002 per evaluation; the tolerance 0.05 is about 1.2x the worst error seen over 200 seeds,
    # while the last loss (at step 32) is off by 2/sqrt(33) - 2/sqrt(257) = 0.223
    last_error = 2 * 33 ** -0.5 - 2 * 257 ** -0.5
    for seed in range(20):
        noisy = power_law(POWER_STEPS) + np.random.default_rng(seed).normal(0.0, 0.002, len(POWER_STEPS))
        assert abs(extrapolate(POWER_STEPS, noisy, 256) - TRUE_AT_256) < 0.05
    assert abs(predict("loss", POWER_STEPS, power_law(POWER_STEPS)) - TRUE_AT_256) == pytest.approx(last_error)


def test_extrapolate_falls_back_to_the_window_with_too_few_points():
    assert extrapolate(np.array([0, 10]), np.array([3.0, 2.0]), 256) == 2.5  # clipping would give 2.0
    # four points, but only steps >= max(1, 3 // 4) = 1 are fitted: three, so the window (3 + 2.5 + 2.2) / 3
    assert extrapolate(np.array([0, 1, 2, 3]), np.array([4.0, 3.0, 2.5, 2.2]), 256) == pytest.approx(7.7 / 3)


def test_extrapolate_never_predicts_above_the_last_loss():
    # no falling power law fits a rise: the fit is b = 0, a = the mean 10.6 / 5 = 2.12, above the last loss
    steps, losses = np.array([4, 5, 6, 7, 8]), np.array([2.0, 2.1, 2.2, 2.3, 2.0])
    assert extrapolate(steps, losses, 64) == 2.0


def test_score_curves_scores_each_prefix_and_keeps_nans():
    steps = np.array([0, 10, 20])
    nan = math.nan
    matrix = np.array([[3.0, 2.0, 1.0],
                       [4.0, nan, 2.0],  # not evaluated at 10: skipped, not a hole in the later windows
                       [nan, nan, nan]])
    window = score_curves(steps, matrix, 20, "window")
    assert window.shape == matrix.shape
    np.testing.assert_allclose(window, [[3.0, 2.5, 2.0], [4.0, nan, 3.0], [nan, nan, nan]], atol=1e-12)
    np.testing.assert_allclose(score_curves(steps, matrix, 20, "loss"), matrix)
    # candidate 1 at step 20 sees (0, 4) and (20, 2): slope -0.1
    np.testing.assert_allclose(score_curves(steps, matrix, 20, "slope"),
                               [[0.0, -0.1, -0.1], [0.0, nan, -0.1], [nan, nan, nan]], atol=1e-12)


def test_score_curves_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        score_curves(np.array([0, 1, 2]), np.ones((2, 2)), 10, "loss")
    with pytest.raises(ValueError, match="ascending"):
        score_curves(np.array([1, 0]), np.ones((2, 2)), 10, "loss")
