"""Rank correlations that know about ties: one vector pair, or a batch of bootstrap replicates.

Ties are those of `noise.py`: two values closer than a tolerance (float rounding, or the paired
evaluation noise) are tied. Spearman rho is then the Pearson r of average ranks over tie groups,
Kendall tau-b counts a tied pair as neither concordant nor discordant, and Pearson r takes the values
as they are. With no ties these are exactly scipy.stats' spearmanr, kendalltau (tau-b) and pearsonr.
The batch functions take the last axis as the strategies and every leading axis as replicates.
"""

from __future__ import annotations

import math

import numpy as np

CI_LEVEL = 0.95


def finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _constant(a: np.ndarray) -> np.ndarray:
    return (a == a[..., :1]).all(axis=-1)


def batch_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xm, ym = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((xm * xm).sum(-1) * (ym * ym).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip((xm * ym).sum(-1) / den, -1.0, 1.0)
    return np.where(_constant(x) | _constant(y), np.nan, r)


def batch_tied_ranks(x: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Average ranks (1 = lowest) of each row of `x` (R, n), where neighbours in sorted order whose
    gap is within `tol` (R, n, n) share a tie group (ties chain, as noise.tie_groups)."""
    r, n = x.shape
    rows = np.arange(r)[:, None]
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    tied = (xs[:, 1:] - xs[:, :-1]) <= tol[rows, order[:, :-1], order[:, 1:]]
    group = np.concatenate([np.zeros((r, 1), int), np.cumsum(~tied, axis=1)], axis=1) + rows * n
    positions = np.tile(np.arange(1, n + 1, dtype=float), r)
    sums = np.bincount(group.ravel(), weights=positions, minlength=r * n)
    counts = np.bincount(group.ravel(), minlength=r * n)
    average = (sums / np.maximum(counts, 1))[group]
    ranks = np.empty_like(average)
    np.put_along_axis(ranks, order, average, axis=-1)
    return ranks


def _no_ties(x: np.ndarray) -> np.ndarray:
    return np.zeros((*x.shape, x.shape[-1]))


def batch_spearman(x: np.ndarray, y: np.ndarray, tol_x: np.ndarray | None = None,
                   tol_y: np.ndarray | None = None) -> np.ndarray:
    """Pearson r of tie-aware average ranks; exact ties only when no tolerance is given."""
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    tx = _no_ties(x2) if tol_x is None else tol_x.reshape(-1, *tol_x.shape[-2:])
    ty = _no_ties(y2) if tol_y is None else tol_y.reshape(-1, *tol_y.shape[-2:])
    rho = batch_pearson(batch_tied_ranks(x2, tx), batch_tied_ranks(y2, ty))
    return rho.reshape(x.shape[:-1])


def batch_kendall(x: np.ndarray, y: np.ndarray, tol_x: np.ndarray | None = None,
                  tol_y: np.ndarray | None = None) -> np.ndarray:
    """Kendall tau-b: (P - Q) / sqrt((n0 - ties_x) (n0 - ties_y)), a pair within its tolerance tied."""
    n = x.shape[-1]
    iu = np.triu_indices(n, k=1)

    def signs(v: np.ndarray, tol: np.ndarray | None) -> np.ndarray:
        diff = v[..., :, None] - v[..., None, :]
        s = np.sign(diff) if tol is None else np.where(np.abs(diff) <= tol, 0.0, np.sign(diff))
        return s[..., iu[0], iu[1]]

    dx, dy = signs(x, tol_x), signs(y, tol_y)
    n0 = n * (n - 1) / 2
    den = np.sqrt((n0 - (dx == 0).sum(-1)) * (n0 - (dy == 0).sum(-1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.clip((dx * dy).sum(-1) / den, -1.0, 1.0)
    return np.where(den > 0, tau, np.nan)


def rank_correlations(x: np.ndarray, y: np.ndarray, tol_x: np.ndarray | None = None,
                      tol_y: np.ndarray | None = None) -> tuple[float | None, float | None, float | None]:
    """Spearman rho, Kendall tau-b and Pearson r of one pair of vectors, ties within `tol_x` /
    `tol_y` ((n, n) each) taken as ties; None where undefined (fewer than 3, or constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3:
        return None, None, None
    rho = batch_spearman(x[None], y[None], None if tol_x is None else tol_x[None],
                         None if tol_y is None else tol_y[None])[0]
    tau = batch_kendall(x[None], y[None], None if tol_x is None else tol_x[None],
                        None if tol_y is None else tol_y[None])[0]
    return finite_or_none(rho), finite_or_none(tau), finite_or_none(batch_pearson(x[None], y[None])[0])


def interval(values: np.ndarray) -> list[float] | None:
    """Percentile interval; None when most replicates were degenerate (too few distinct strategies)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.size < values.size / 2:
        return None
    tail = 100 * (1 - CI_LEVEL) / 2
    return [float(v) for v in np.percentile(finite, [tail, 100 - tail])]
