"""Predictors of the final ranking from the start of a learning curve: named, pure, numpy/scipy only.

LAG ranks candidates by their held-out loss at the step of decision k. A predictor generalises that:
it takes one candidate's curve up to k and returns a number where LOWER IS BETTER, either a predicted
final loss (`kind == "predicted loss"`) or a score that only orders candidates (`kind == "score"`).

The contract of every predictor function `fn(steps, losses, final_step) -> float`:

- `steps`: the evaluated steps (ascending, distinct integers) up to the step of decision;
- `losses`: the held-out losses at those steps, all finite (the caller drops NaNs), at least one;
- `final_step`: the step T whose loss is being predicted (ignored by predictors that do not extrapolate).

`score_curves` applies one predictor to every (candidate, step) of a pool's loss matrix, which is what
a correlation study over steps needs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from laggrow.errors import LaggrowError

# The last WINDOW evaluations are averaged (`window`) or fitted by a line (`slope`): three points
# damp evaluation noise by about sqrt(3) while staying local to the step of decision.
WINDOW = 3

# `extrapolate`: the power law L(t) = a + b * (t + 1) ** -c is fitted to the late part of the seen
# segment, steps >= max(1, last_step // EXTRAPOLATE_TAIL_DIVISOR), which skips step 0 and the
# transient right after growth. With fewer than EXTRAPOLATE_MIN_POINTS points there (three
# parameters need a fourth point to have any check), or when the fit fails, `window` is returned.
EXTRAPOLATE_TAIL_DIVISOR = 4
EXTRAPOLATE_MIN_POINTS = 4
EXPONENT_BOUNDS = (0.05, 3.0)
EXTRAPOLATE_MAXFEV = 200  # the grid start below is close; a fit needing more is one we do not trust
# Exponents tried for the starting point: for a fixed c the model is linear in (a, b).
_EXPONENT_GRID = np.geomspace(*EXPONENT_BOUNDS, 24)

Kind = Literal["predicted loss", "score"]
PredictorFn = Callable[[np.ndarray, np.ndarray, int], float]


@dataclass(frozen=True)
class Predictor:
    name: str
    fn: PredictorFn
    summary: str
    kind: Kind
    # for a predictor that can fall back to another: why it did on this curve, or None (same arguments
    # as `fn`), so that the comparison says how often its numbers are not its own
    fell_back: Callable[[np.ndarray, np.ndarray, int], str | None] | None = None


# ---- the predictors ---------------------------------------------------------------------------

def last_loss(steps: np.ndarray, losses: np.ndarray, final_step: int) -> float:
    """The loss at the step of decision: LAG itself."""
    return float(losses[-1])


def window_mean(steps: np.ndarray, losses: np.ndarray, final_step: int) -> float:
    """Mean of the last WINDOW losses (all of them when fewer exist)."""
    return float(np.mean(losses[-WINDOW:]))


def window_slope(steps: np.ndarray, losses: np.ndarray, final_step: int) -> float:
    """Least-squares slope (loss per step) over the last WINDOW points; 0.0 for a single point.

    A score, not a loss: more negative means still falling faster, which ranks better.
    """
    t = np.asarray(steps[-WINDOW:], dtype=float)
    y = np.asarray(losses[-WINDOW:], dtype=float)
    if len(t) < 2:
        return 0.0
    dt = t - t.mean()
    return float(np.dot(dt, y - y.mean()) / np.dot(dt, dt))


def _power_law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * (t + 1.0) ** (-c)


def _power_law_jac(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    x = (t + 1.0) ** (-c)
    return np.stack([np.ones_like(t), x, -b * x * np.log(t + 1.0)], axis=1)


def _initial_guess(t: np.ndarray, y: np.ndarray, a_max: float) -> tuple[float, float, float]:
    """Best (a, b, c) over a grid of exponents, (a, b) by least squares for each: curve_fit then
    starts near the optimum instead of wandering from a fixed guess."""
    x = (t[None, :] + 1.0) ** (-_EXPONENT_GRID[:, None])  # grid x points
    dx = x - x.mean(axis=1, keepdims=True)
    b = np.maximum((dx * (y - y.mean())).sum(axis=1) / (dx * dx).sum(axis=1), 0.0)
    a = np.clip(y.mean() - b * x.mean(axis=1), 0.0, a_max)
    sse = ((a[:, None] + b[:, None] * x - y) ** 2).sum(axis=1)
    i = int(np.argmin(sse))
    return float(a[i]), float(b[i]), float(_EXPONENT_GRID[i])


def extrapolate(steps: np.ndarray, losses: np.ndarray, final_step: int) -> float:
    """The loss at `final_step` of a power law fitted to the late part of the curve (`extrapolate_fit`)."""
    return extrapolate_fit(steps, losses, final_step)[0]


def extrapolate_fallback(steps: np.ndarray, losses: np.ndarray, final_step: int) -> str | None:
    """Why `extrapolate` returned the window mean on this curve, or None when it fitted."""
    return extrapolate_fit(steps, losses, final_step)[1]


def extrapolate_fit(steps: np.ndarray, losses: np.ndarray, final_step: int) -> tuple[float, str | None]:
    """The loss at `final_step` of a power law a + b * (t + 1) ** -c fitted to the late part of the
    curve, and None; or the fallback's value and why it was taken.

    Fitted by scipy's curve_fit to the points with step >= max(1, last_step // 4), under the bounds
    a in [0, max loss of those points], b >= 0, c in [0.05, 3]. The prediction is clipped to
    [0, last loss]: the fit is of a falling curve, and a falling curve does not end above where it is
    now (a fitted b = 0 or a noisy rise would otherwise predict that). Falls back to `window_mean`
    (unclipped) with fewer than 4 points to fit, when the fit fails, or when the result is not finite.
    """
    fallback = window_mean(steps, losses, final_step)
    t = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    late = t >= max(1, int(steps[-1]) // EXTRAPOLATE_TAIL_DIVISOR)
    t, y = t[late], y[late]
    a_max = float(y.max()) if len(y) else 0.0
    if len(t) < EXTRAPOLATE_MIN_POINTS:
        return fallback, f"fewer than {EXTRAPOLATE_MIN_POINTS} points to fit"
    if not a_max > 0.0:
        return fallback, "no positive loss to fit"
    p0 = _initial_guess(t, y, a_max)
    try:
        with warnings.catch_warnings():  # an exact fit has no covariance estimate; we use only the point
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            (a, b, c), _ = curve_fit(_power_law, t, y, p0=p0, jac=_power_law_jac, method="trf",
                                     bounds=([0.0, 0.0, EXPONENT_BOUNDS[0]], [a_max, np.inf, EXPONENT_BOUNDS[1]]),
                                     maxfev=EXTRAPOLATE_MAXFEV)
    except (RuntimeError, ValueError, FloatingPointError):  # no convergence within maxfev, or a bad start
        return fallback, "the fit did not converge"
    value = float(_power_law(np.float64(final_step), a, b, c))
    if not math.isfinite(value):
        return fallback, "the fit is not finite at the final step"
    return min(max(value, 0.0), float(losses[-1])), None


PREDICTORS: dict[str, Predictor] = {p.name: p for p in (
    Predictor("loss", last_loss, "the loss at the step of decision (LAG)", "predicted loss"),
    Predictor("window", window_mean, f"mean loss of the last {WINDOW} evaluations", "predicted loss"),
    Predictor("slope", window_slope,
              f"least-squares loss per step over the last {WINDOW} evaluations (a score: lower = falling faster)",
              "score"),
    Predictor("extrapolate", extrapolate,
              "power law a + b*(t+1)**-c fitted to steps >= last/4, evaluated at the final step", "predicted loss",
              fell_back=extrapolate_fallback),
)}


def predictor_names() -> list[str]:
    return list(PREDICTORS)


def get_predictor(name: str) -> Predictor:
    if name not in PREDICTORS:
        raise LaggrowError(f"predictor {name!r}: unknown (expected one of: {', '.join(PREDICTORS)})")
    return PREDICTORS[name]


# ---- over a pool ------------------------------------------------------------------------------

def score_curves(steps: np.ndarray, loss_matrix: np.ndarray, final_step: int, name: str) -> np.ndarray:
    """Predictor `name` at every (candidate, step): entry [c, j] is the predictor applied to candidate
    c's finite points with step <= steps[j]; NaN where loss_matrix[c, j] is NaN (not evaluated, or
    diverged), so a candidate is scored only at steps where LAG could rank it too."""
    fn = get_predictor(name).fn
    steps = np.asarray(steps)
    loss_matrix = np.asarray(loss_matrix, dtype=float)
    if loss_matrix.ndim != 2 or steps.shape != (loss_matrix.shape[1],):
        raise ValueError(f"score_curves: steps {steps.shape} do not match the loss matrix {loss_matrix.shape}")
    if len(steps) > 1 and not (np.diff(steps) > 0).all():
        raise ValueError("score_curves: steps must be strictly ascending")
    out = np.full(loss_matrix.shape, np.nan)
    for c, row in enumerate(loss_matrix):
        finite = np.isfinite(row)
        for j in np.flatnonzero(finite):
            seen = finite[: j + 1]
            out[c, j] = fn(steps[: j + 1][seen], row[: j + 1][seen], final_step)
    return out
