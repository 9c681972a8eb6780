"""What the measurements can resolve: standard errors, ties within them, and the strategies that
cannot be told from the best. Pure numpy; every rule here is also stated in the results.

Two sources of noise separate a measured difference of losses from a real one:

- **Evaluation noise**: which held-out windows were read. Every candidate of a pool is evaluated on
  the same windows, so a *difference* of two losses is measured per window and its standard error
  is the spread of the per-window differences over sqrt(windows) (`paired_window_se`): the
  windows' common difficulty cancels. For strategies with several seeds the per-window loss is the
  mean over the seeds first, as the strategy's loss is. Windows of one document are correlated, so
  this is a lower bound on that noise.
- **Seed noise**: growth randomness and data order. The candidates of one seed share their batches,
  so a difference is paired by seed (`paired_seed_se`): its SE is the spread of the per-seed
  differences of *the two strategies compared*, over sqrt(seeds), never a pooled figure that a
  noisy strategy out of contention (a scratch baseline) would inflate.

**Ties.** Two losses closer than the evaluation can resolve are tied: within `Z` paired window
standard errors when per-window losses are known, and always within float rounding
(`FLOAT_RESOLUTION` of their size, which two function-preserving growths of one model differ by).
Ties are taken into ranks (tie groups chain neighbours that are tied), the leaders of a step (every
strategy tied with the lowest), and from there top-k probabilities and regret (ties broken at
random: each leader equally likely).

**The best set at T.** The strategies whose final loss is within `Z` standard errors of the best's,
the SE combining seed and evaluation noise of that pair (`best_set`): none of them can be told from
the best, so a pick is judged right when it lands in the set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Differences within this many standard errors cannot be told apart (about a 95% two-sided band).
Z = 2.0
# Losses whose relative difference is below this are the same number up to float32 rounding of a
# mean over thousands of tokens (two loss-preserving growths of one model differ by ~1e-7).
FLOAT_RESOLUTION = 1e-6


def float_tolerance(a: float, b: float) -> float:
    return FLOAT_RESOLUTION * max(abs(a), abs(b))


# ---- standard errors ---------------------------------------------------------------------------

def se_over_windows(windows: np.ndarray) -> float | None:
    """The standard error of a mean over windows; None for fewer than two."""
    windows = np.asarray(windows, np.float64)
    if windows.size < 2:
        return None
    return float(windows.std(ddof=1) / math.sqrt(windows.size))


def paired_window_se(a: np.ndarray, b: np.ndarray) -> float | None:
    """SE of the difference of two mean losses read on the same windows (last axis): per-window
    losses (windows,) or (seeds, windows), averaged over seeds first. None when not computable."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 2:
        a = a.mean(axis=0)
    if b.ndim == 2:
        b = b.mean(axis=0)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    return se_over_windows(a - b)


def paired_seed_se(a: dict[int, float], b: dict[int, float]) -> float | None:
    """SE of the mean over seeds of the per-seed difference a - b (the seeds both have); None with
    fewer than two such seeds."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    diff = np.array([a[s] - b[s] for s in common], np.float64)
    return float(diff.std(ddof=1) / math.sqrt(len(diff)))


def combined_se(*parts: float | None) -> float | None:
    """Independent sources added in quadrature; None when none is known."""
    known = [p for p in parts if p is not None]
    return float(math.sqrt(sum(p * p for p in known))) if known else None


# ---- ties at one step ---------------------------------------------------------------------------

def tie_tolerances(values: np.ndarray, windows: np.ndarray | None = None, z: float = Z) -> np.ndarray:
    """(U, U) symmetric: the difference below which strategies u and v are tied at this step:
    float rounding, or `z` paired window SEs when `windows` ((U, windows) per-window losses, NaN
    rows where unknown) are given."""
    values = np.asarray(values, np.float64)
    n = len(values)
    tol = np.zeros((n, n))
    for u in range(n):
        for v in range(u + 1, n):
            t = float_tolerance(values[u], values[v])
            if windows is not None:
                se = paired_window_se(windows[u], windows[v])
                if se is not None:
                    t = max(t, z * se)
            tol[u, v] = tol[v, u] = t
    return tol


def leaders(values: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Indices of the strategies tied with the lowest value (the lowest among them included)."""
    values = np.asarray(values, np.float64)
    low = int(np.argmin(values))
    return np.flatnonzero(values - values[low] <= tol[:, low])


def tie_groups(values: np.ndarray, tol: np.ndarray) -> list[list[int]]:
    """Strategies in ascending order of value, grouped: a strategy tied with its lower neighbour
    joins its group (ties chain)."""
    order = np.argsort(np.asarray(values, np.float64), kind="stable")
    groups: list[list[int]] = []
    for i in order:
        i = int(i)
        if groups and values[i] - values[groups[-1][-1]] <= tol[i, groups[-1][-1]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def tied_ranks(values: np.ndarray, tol: np.ndarray, method: str = "min") -> np.ndarray:
    """Ranks (1 = lowest) with tie groups sharing one rank: the group's best ('min') or the mean
    of the ranks it spans ('average', what rank correlations take)."""
    ranks = np.empty(len(values))
    start = 1
    for group in tie_groups(values, tol):
        ranks[group] = start if method == "min" else start + (len(group) - 1) / 2
        start += len(group)
    return ranks


def hit_probability(groups_at_k: list[list[int]], best: set[int], n_top: int) -> float:
    """Probability that a final best (`best`) is among the `n_top` chosen at step k, where the
    choice takes tie groups in order and breaks the group at the boundary uniformly at random."""
    taken = 0
    for group in groups_at_k:
        if taken + len(group) <= n_top:
            if best & set(group):
                return 1.0
            taken += len(group)
            continue
        slots = n_top - taken
        if slots <= 0:
            return 0.0
        n_best = len(best & set(group))
        return 1.0 - math.comb(len(group) - n_best, slots) / math.comb(len(group), slots)
    return 0.0


def sign_with_ties(values: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """(U, U) sign of values[u] - values[v], 0 where the two are tied."""
    values = np.asarray(values, np.float64)
    diff = values[:, None] - values[None, :]
    return np.where(np.abs(diff) <= tol, 0.0, np.sign(diff))


# ---- the best set at the final step -------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """One strategy against the best at the final step."""

    strategy: str
    loss: float  # mean over seeds
    diff: float  # loss - the best's
    seed_se: float | None  # paired over seeds
    eval_se: float | None  # paired over windows
    se: float | None  # both, in quadrature
    indistinguishable: bool  # diff within Z x se (or float rounding): cannot be told from the best


def best_set(names: list[str], final: dict[str, dict[int, float]],
             windows: dict[str, np.ndarray] | None = None, z: float = Z) -> dict:
    """The best strategy by mean final loss over its seeds, and every strategy that cannot be told
    from it: `final` maps strategy -> seed -> final loss; `windows` (optional) strategy -> its
    seeds' per-window final losses (seeds, windows), for the evaluation noise."""
    means = {n: float(np.mean(list(final[n].values()))) for n in names}
    best = min(names, key=lambda n: means[n])
    rows = []
    for n in sorted(names, key=lambda n: means[n]):
        diff = means[n] - means[best]
        seed_se = paired_seed_se(final[n], final[best]) if n != best else None
        eval_se = paired_window_se(windows[n], windows[best]) if windows and n != best \
            and n in windows and best in windows else None
        se = combined_se(seed_se, eval_se)
        tol = max(float_tolerance(means[n], means[best]), z * se if se is not None else 0.0)
        rows.append(Comparison(n, means[n], diff, seed_se, eval_se, se, n == best or diff <= tol))
    seeds = max(len(v) for v in final.values())
    sources = ["seeds paired" if seeds >= 2 else None, "windows paired" if windows else None]
    known = " and ".join(s for s in sources if s) or "float rounding only: neither noise is measured"
    return {"best": best, "members": [r.strategy for r in rows if r.indistinguishable], "z": z,
            "rule": f"final loss within {z:g} standard errors of the best's ({known})",
            "seed_noise_measured": seeds >= 2, "eval_noise_measured": bool(windows),
            "comparisons": [asdict(r) for r in rows]}


def noises_of_a_difference(best: dict) -> dict:
    """The two noises of a final difference against the best, side by side (medians over the
    other strategies of `best_set`'s comparisons): whether the held-out set is large enough that
    reading other windows would move a difference less than another seed would."""
    others = [c for c in best["comparisons"] if c["strategy"] != best["best"]]

    def median(key: str) -> float | None:
        values = [c[key] for c in others if c[key] is not None]
        return float(np.median(values)) if values else None

    eval_se, seed_se = median("eval_se"), median("seed_se")
    return {"eval_se_of_a_difference": eval_se, "seed_se_of_a_difference": seed_se,
            "eval_below_seed_noise": None if eval_se is None or seed_se is None else eval_se < seed_se}
