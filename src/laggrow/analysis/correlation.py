"""How early does the ranking of growth strategies settle? Pool records in, statistics out.

Input is a `Curves` (see curves.py: the records of one pool as arrays). Everything here is a
pure function over numpy arrays plus scipy.stats; rendering lives in `report.py`. The rules chosen,
also stated in the output:

- The ranked unit is the *strategy*. With several seeds per strategy its loss at every step is the
  mean over its seeds; the per-strategy spread of final losses and per-seed correlations are reported.
- A candidate without a finite loss at the final step (diverged, or not trained that far) is left
  out of every statistic, and said so.
- Ties at a step are broken uniformly at random *in expectation*: top-1 / top-3 are hit
  probabilities and regret is the mean over the tied leaders. At step 0 function-preserving
  strategies tie exactly, and a ranking by step-0 loss cannot tell them apart.
- Regret tolerance, unless given: with several seeds, one standard error of the difference between
  two strategies' mean final losses (pooled seed sd x sqrt(2 / seeds per strategy)): a regret
  below it cannot be told from seed noise. The sd is taken after removing each seed's mean over
  strategies: candidates of a seed share batches, and the shift that gives all of them does not
  reorder them. With one seed, a tenth of the spread of final losses.
- Bootstrap intervals (95%, percentile) resample strategies and, within each, its seeds.
- Little lag: the smallest evaluated step k before the final step such that at k and at every later
  step before the final, Spearman rho >= threshold and regret <= the regret tolerance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import stats

from laggrow.analysis.curves import Curves, has_finals, load_curves, resolve_final_step, steps_with_loss
from laggrow.analysis.predictors import get_predictor, score_curves
from laggrow.errors import LaggrowError
from laggrow.resources import SEED_MAX, check_bootstrap

# Re-exported: a command needs only this module to go from a directory to a result.
__all__ = ["Curves", "load_curves", "has_finals", "resolve_final_step", "correlate", "ranking_stability"]

CI_LEVEL = 0.95
ROUNDING = 1e-9  # slack for floating-point rounding when comparing with the threshold and tolerance
# Without seed noise to measure, a choice within a tenth of the spread of final losses counts as right.
REGRET_SPREAD_FRACTION = 0.1


# ---- point statistics -------------------------------------------------------------------------

def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def rank_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Spearman rho, Kendall tau-b and Pearson r from scipy.stats; None where undefined (constant input)."""
    if len(x) < 3:
        return None, None, None
    with warnings.catch_warnings():  # constant input: scipy warns and returns nan, we report None
        warnings.simplefilter("ignore")
        return (_finite_or_none(stats.spearmanr(x, y).statistic),
                _finite_or_none(stats.kendalltau(x, y).statistic),
                _finite_or_none(stats.pearsonr(x, y).statistic))


def hit_probability(at_k: np.ndarray, final: np.ndarray, n_top: int) -> float:
    """Probability that a final best is among the `n_top` lowest at step k, ties at k broken at random."""
    best = final == final.min()
    n_top = min(n_top, len(at_k))
    boundary = np.sort(at_k)[n_top - 1]
    sure = at_k < boundary
    if (best & sure).any():
        return 1.0
    tied = at_k == boundary
    slots, n_tied, n_best_tied = n_top - int(sure.sum()), int(tied.sum()), int((tied & best).sum())
    return 1.0 - math.comb(n_tied - n_best_tied, slots) / math.comb(n_tied, slots)


def choice_regret(at_k: np.ndarray, final: np.ndarray) -> float:
    """Final loss of the strategy chosen at k minus the best final loss (mean over tied leaders at k)."""
    return float(final[at_k == at_k.min()].mean() - final.min())


# ---- the same statistics over a batch of bootstrap replicates (last axis = units) ----------------

def _constant(a: np.ndarray) -> np.ndarray:
    return (a == a[..., :1]).all(axis=-1)


def batch_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xm, ym = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((xm * xm).sum(-1) * (ym * ym).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip((xm * ym).sum(-1) / den, -1.0, 1.0)
    return np.where(_constant(x) | _constant(y), np.nan, r)


def batch_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of average ranks: what scipy.stats.spearmanr computes, ties included."""
    return batch_pearson(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def batch_kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b, as scipy.stats.kendalltau: (P - Q) / sqrt((n0 - ties_x) (n0 - ties_y))."""
    n = x.shape[-1]
    iu = np.triu_indices(n, k=1)
    dx = np.sign(x[..., :, None] - x[..., None, :])[..., iu[0], iu[1]]
    dy = np.sign(y[..., :, None] - y[..., None, :])[..., iu[0], iu[1]]
    n0 = n * (n - 1) / 2
    den = np.sqrt((n0 - (dx == 0).sum(-1)) * (n0 - (dy == 0).sum(-1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.clip((dx * dy).sum(-1) / den, -1.0, 1.0)
    return np.where(den > 0, tau, np.nan)


def _interval(values: np.ndarray) -> list[float] | None:
    """Percentile interval; None when most replicates were degenerate (too few distinct strategies)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.size < values.size / 2:
        return None
    tail = 100 * (1 - CI_LEVEL) / 2
    return [float(v) for v in np.percentile(finite, [tail, 100 - tail])]


# ---- strategies as ranked units ---------------------------------------------------------------

@dataclass(frozen=True)
class _Pool:
    """The strategies that can be ranked up to step index `last`, and who was left out and why."""

    names: list[str]
    members: list[np.ndarray]  # rows of curves.loss (candidates) of each strategy
    loss: np.ndarray  # (strategies, steps up to last): mean over seeds, NaN where any seed lacks a loss
    excluded: list[dict]


def rankable_pool(curves: Curves, last_step: int) -> _Pool:
    last = int(np.searchsorted(curves.steps, last_step))
    rows, excluded = [], []
    for r, cand in enumerate(curves.candidates):
        if np.isfinite(curves.loss[r, last]):
            rows.append(r)
            continue
        diverged = cand.diverged_at is not None and cand.diverged_at <= last_step
        excluded.append({"candidate": cand.candidate, "strategy": cand.strategy, "seed": cand.seed,
                         "reason": f"diverged at step {cand.diverged_at}" if diverged
                         else f"no eval loss at step {last_step}"})
    names = sorted({curves.candidates[r].strategy for r in rows})
    if len(names) < 3:
        raise LaggrowError(f"{curves.source}: {len(names)} strategies with a loss at step {last_step} "
                           f"({', '.join(names) or 'none'}); a ranking needs at least three")
    members = [np.array([r for r in rows if curves.candidates[r].strategy == n]) for n in names]
    loss = np.stack([curves.loss[m, : last + 1].mean(axis=0) for m in members])
    return _Pool(names, members, loss, excluded)


def _notes(pool: _Pool) -> list[str]:
    return [f"left out of every statistic: {e['strategy']} seed {e['seed']} (candidate {e['candidate']}), "
            f"{e['reason']}" for e in pool.excluded]


def ranks_by_step(loss: np.ndarray) -> np.ndarray:
    """Rank of each strategy (rows) at each step (columns): 1 = lowest loss, ties share the best rank."""
    ranks = np.full(loss.shape, np.nan)
    for j in range(loss.shape[1]):
        ok = np.isfinite(loss[:, j])
        ranks[ok, j] = stats.rankdata(loss[ok, j], method="min")
    return ranks


def _leaders(names: list[str], at: np.ndarray) -> list[str]:
    ok = np.isfinite(at)
    return [n for n, v, o in zip(names, at, ok, strict=True) if o and v == at[ok].min()] if ok.any() else []


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [_finite_or_none(float(v)) for v in values]


def _strategy_curves(curves: Curves, pool: _Pool) -> list[dict]:
    """Per strategy: its candidates and seeds, whether it preserves the function, loss and rank by step."""
    ranks = ranks_by_step(pool.loss)
    out = []
    for u, (name, members) in enumerate(zip(pool.names, pool.members, strict=True)):
        preserving = {curves.candidates[i].function_preserving for i in members}
        out.append({"strategy": name, "candidates": [curves.candidates[i].candidate for i in members],
                    "seeds": [curves.candidates[i].seed for i in members],
                    "function_preserving": preserving.pop() if len(preserving) == 1 else None,
                    "loss": _nan_to_none(pool.loss[u]), "rank": _nan_to_none(ranks[u])})
    return out


# ---- results --------------------------------------------------------------------------------------

@dataclass
class StepRow:
    """The view from one evaluated step: how well ranking by the loss here predicts the final ranking."""

    step: int
    n: int  # strategies with a loss at this step
    spearman: float | None
    spearman_ci: list[float] | None
    kendall: float | None
    kendall_ci: list[float] | None
    pearson: float | None
    pearson_ci: list[float] | None
    top1: float | None  # probability that the leader here is the final best
    top3: float | None  # probability that the final best is among the three lowest here
    regret: float | None  # final loss of the leader here minus the best final loss
    regret_frac: float | None  # regret over the spread of final losses
    leaders: list[str]
    compute_fraction: float | None  # compute spent by the pool up to here over its final compute
    settled: bool  # at or after the little lag, before the final step
    spearman_by_seed: dict[str, float | None] | None  # within each seed, when there are several


@dataclass
class CorrelationResult:
    source: str
    predictor: str  # what ranks the strategies before the final step (predictors.py)
    final_step: int
    lag_steps: int | None
    planned_final_steps: int | None
    steps: list[int]
    strategies: list[dict]
    excluded: list[dict]
    rows: list[StepRow]
    init: dict | None
    little_lag: dict
    bootstrap: dict
    notes: list[str]

    def to_dict(self) -> dict:
        return {"schema": "laggrow.correlation/1", **asdict(self)}


@dataclass
class StabilityResult:
    source: str
    last_step: int
    lag_steps: int | None
    steps: list[int]
    strategies: list[dict]
    excluded: list[dict]
    rows: list[dict]
    notes: list[str]

    def to_dict(self) -> dict:
        return {"schema": "laggrow.stability/1", **asdict(self)}


# ---- correlation against the final loss -------------------------------------------------------

def _bootstrap(curves: Curves, pool: _Pool, n_boot: int, seed: int) -> list[dict]:
    """Percentile intervals per step, resampling strategies and, within each, its seeds.

    Seeds are drawn once per replicate for all steps, so a resampled seed's early loss is paired
    with that same seed's final loss, as in the point estimate.
    """
    n_steps = pool.loss.shape[1]
    if n_boot == 0:
        return [{}] * n_steps
    rng = np.random.default_rng(seed)
    means = np.empty((len(pool.names), n_boot, n_steps))
    for u, members in enumerate(pool.members):
        draw = rng.integers(0, len(members), size=(n_boot, len(members)))
        means[u] = curves.loss[members, :n_steps][draw].mean(axis=1)
    replicate = np.arange(n_boot)[:, None]
    out = []
    for j in range(n_steps):
        valid = np.flatnonzero(np.isfinite(pool.loss[:, j]))
        if len(valid) < 3:
            out.append({})
            continue
        pick = valid[rng.integers(0, len(valid), size=(n_boot, len(valid)))]
        x, y = means[pick, replicate, j], means[pick, replicate, n_steps - 1]
        out.append({"spearman": _interval(batch_spearman(x, y)), "kendall": _interval(batch_kendall(x, y)),
                    "pearson": _interval(batch_pearson(x, y))})
    return out


def _regret_tolerance(curves: Curves, pool: _Pool, spread: float) -> tuple[float, str]:
    """Seed noise when there is some (see the module docstring); else a tenth of the spread."""
    fi = pool.loss.shape[1] - 1
    final = curves.loss[:, fi].astype(float)
    # Candidates of one seed share their batches, so a seed's data order shifts every strategy
    # alike; that common shift does not move the ranking and is removed before measuring noise.
    seeds = np.array([c.seed for c in curves.candidates])
    ranked = np.concatenate([np.asarray(m) for m in pool.members])
    for seed in np.unique(seeds[ranked]):
        same = ranked[seeds[ranked] == seed]
        final[same] -= final[same].mean()
    groups = [final[m] for m in pool.members if len(m) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    pooled_sd = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof) if dof else 0.0
    if pooled_sd > 0:
        seeds = float(np.mean([len(m) for m in pool.members]))
        return (pooled_sd * math.sqrt(2 / seeds),
                f"seed noise: one standard error of the difference of two strategies' mean final losses "
                f"(pooled seed sd {pooled_sd:.4g}, {seeds:.3g} seeds per strategy)")
    return (REGRET_SPREAD_FRACTION * spread,
            f"{REGRET_SPREAD_FRACTION:g} x the spread of final losses (no seed noise to measure)")


def _compute_fractions(curves: Curves, pool: _Pool) -> tuple[np.ndarray, str]:
    """Compute spent by the ranked candidates up to each step over their compute at the final step:
    FLOPs when recorded, else tokens, else steps (one LR schedule and one batch size for all)."""
    rows, fi = np.concatenate(pool.members), pool.loss.shape[1] - 1
    for basis, spent in (("flops", curves.flops), ("tokens", curves.tokens)):
        total = spent[rows, fi]
        if np.isfinite(total).all() and total.sum() > 0:
            return spent[rows, : fi + 1].sum(axis=0) / total.sum(), basis
    return curves.steps[: fi + 1] / max(int(curves.steps[fi]), 1), "steps"


def _per_seed_spearman(curves: Curves, pool: _Pool) -> dict[str, list[float | None]]:
    """Spearman rho by step within each seed (one candidate per strategy): the ranking's seed noise.
    Empty unless at least two seeds each cover three strategies."""
    rows, fi = np.concatenate(pool.members), pool.loss.shape[1] - 1
    out = {}
    for s in sorted({curves.candidates[r].seed for r in rows}):
        loss = curves.loss[[r for r in rows if curves.candidates[r].seed == s], : fi + 1]
        if len(loss) >= 3:
            out[str(s)] = [rank_correlations(loss[np.isfinite(loss[:, j]), j],
                                             loss[np.isfinite(loss[:, j]), fi])[0] for j in range(fi + 1)]
    return out if len(out) >= 2 else {}


def little_lag(steps: list[int], spearman: list[float | None], regret: list[float | None],
               final_step: int, threshold: float, regret_tol: float) -> int | None:
    """Smallest step k < final_step from which every step before the final has rho >= threshold and
    regret <= regret_tol; None when the last step before the final fails (the ranking never settled)."""
    found = None
    for step, rho, reg in reversed(list(zip(steps, spearman, regret, strict=True))):
        if step >= final_step:
            continue
        # with few strategies rho takes rational values (one adjacent swap of 5 gives exactly 0.9),
        # which scipy may return a rounding error below the threshold: compare with a little slack
        if rho is None or rho < threshold - ROUNDING or reg is None or reg > regret_tol + ROUNDING:
            break
        found = step
    return found


def _step_row(pool: _Pool, j: int, boot: dict, fraction: float, spread: float,
              by_seed: dict[str, list[float | None]], step: int) -> StepRow:
    ok = np.isfinite(pool.loss[:, j])
    at_k, final = pool.loss[ok, j], pool.loss[ok, -1]
    usable = len(at_k) >= 3
    rho, tau, r = rank_correlations(at_k, final)
    regret = choice_regret(at_k, final) if usable else None
    return StepRow(
        step=step, n=len(at_k), spearman=rho, spearman_ci=boot.get("spearman"), kendall=tau,
        kendall_ci=boot.get("kendall"), pearson=r, pearson_ci=boot.get("pearson"),
        top1=hit_probability(at_k, final, 1) if usable else None,
        top3=hit_probability(at_k, final, 3) if usable else None,
        regret=regret, regret_frac=regret / spread if regret is not None and spread > 0 else None,
        leaders=_leaders(pool.names, pool.loss[:, j]), compute_fraction=_finite_or_none(float(fraction)),
        settled=False, spearman_by_seed={s: v[j] for s, v in by_seed.items()} if by_seed else None)


def scored(curves: Curves, final_step: int, predictor: str) -> Curves:
    """`curves` with every loss before the final step replaced by predictor `predictor`'s score of
    the candidate's curve up to there (lower is better), and the final step's loss kept: what the
    statistics rank against. A strategy's score is then the mean of its seeds' scores, as its loss
    is for `loss`. The regret tolerance still reads the true final losses."""
    if predictor == "loss":
        return curves
    scores = score_curves(curves.steps, curves.loss, final_step, predictor)
    fi = int(np.searchsorted(curves.steps, final_step))
    scores[:, fi:] = curves.loss[:, fi:]
    return replace(curves, loss=scores)


def correlate(curves: Curves, final_step: int | None = None, threshold: float = 0.9,
              regret_tol: float | None = None, n_boot: int = 1000, seed: int = 0,
              predictor: str = "loss") -> CorrelationResult:
    """Rank correlations, top-k hits and the regret of choosing at each evaluated step by
    `predictor` (see predictors.py; `loss`, LAG's, ranks by the loss there), against the final
    loss; and the little lag. Raises LaggrowError when nothing can be computed."""
    get_predictor(predictor)
    if not -1 < threshold <= 1:
        raise LaggrowError(f"threshold {threshold}: expected a correlation in (-1, 1]")
    if regret_tol is not None and not (math.isfinite(regret_tol) and regret_tol >= 0):
        raise LaggrowError(f"regret tolerance {regret_tol}: expected a finite number >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise LaggrowError(f"bootstrap seed {seed!r}: expected an integer in [0, 2**32 - 1]")
    check_bootstrap(n_boot, 0, 0, 0, what="bootstrap resamples")  # the count, before any work
    final_step = resolve_final_step(curves, final_step)
    curves = scored(curves, final_step, predictor)
    pool = rankable_pool(curves, final_step)
    # what the bootstrap allocates, before it does
    check_bootstrap(n_boot, len(pool.names), pool.loss.shape[1], max((len(m) for m in pool.members), default=0),
                    what="bootstrap resamples")
    final = pool.loss[:, -1]
    spread = float(final.max() - final.min())
    tol, tol_source = (regret_tol, "given") if regret_tol is not None else \
        _regret_tolerance(curves, pool, spread)
    fractions, basis = _compute_fractions(curves, pool)
    boot, by_seed = _bootstrap(curves, pool, n_boot, seed), _per_seed_spearman(curves, pool)
    steps = [int(s) for s in curves.steps[: pool.loss.shape[1]]]
    rows = [_step_row(pool, j, boot[j], fractions[j], spread, by_seed, step)
            for j, step in enumerate(steps)]
    lag = little_lag(steps, [r.spearman for r in rows], [r.regret for r in rows], final_step, threshold, tol)
    for row in rows:
        row.settled = lag is not None and lag <= row.step < final_step
    notes = _notes(pool)
    if curves.final_steps is not None and final_step < curves.final_steps:
        notes.append(f"final step {final_step} is short of the planned {curves.final_steps}: "
                     "train-final has not finished, or an earlier final step was asked for")
    strategies = _strategy_curves(curves, pool)
    for entry, members in zip(strategies, pool.members, strict=True):
        entry["final_loss"] = entry["loss"][-1]
        entry["final_loss_sd"] = float(np.std(curves.loss[members, len(steps) - 1], ddof=1)) \
            if len(members) > 1 else None
    init = None
    if steps[0] == 0:  # the view from initialisation: what loss- or function-preservation would pick
        init = {**asdict(rows[0]), "function_preserving": [
            s["strategy"] for s in strategies if s["function_preserving"]]}
    return CorrelationResult(
        source=curves.source, predictor=predictor, final_step=final_step, lag_steps=curves.lag_steps,
        planned_final_steps=curves.final_steps, steps=steps, strategies=strategies,
        excluded=pool.excluded, rows=rows, init=init,
        little_lag={"step": lag, "compute_fraction": rows[steps.index(lag)].compute_fraction
                    if lag is not None else None, "compute_basis": basis, "threshold": threshold,
                    "regret_tol": tol, "regret_tol_source": tol_source},
        bootstrap={"n": n_boot, "seed": seed, "ci_level": CI_LEVEL,
                   "resampled": "strategies, and seeds within each strategy"},
        notes=notes)


# ---- without finals: how stable is the ranking between successive steps -----------------------

def ranking_stability(curves: Curves) -> StabilityResult:
    """Spearman and Kendall between successive evaluated steps and Spearman against the last one,
    and whether the leader changed: what can be said before train-final."""
    reached = steps_with_loss(curves)
    if len(reached) == 0:
        raise LaggrowError(f"{curves.source}: no record has a finite eval_loss; expected a probed pool")
    last = int(reached.max())
    pool = rankable_pool(curves, last)
    rows: list[dict] = []
    for j, step in enumerate(curves.steps[: pool.loss.shape[1]]):
        at = pool.loss[:, j]
        ok = np.isfinite(at)
        row = {"step": int(step), "leaders": _leaders(pool.names, at),
               "spearman_vs_last": rank_correlations(at[ok], pool.loss[ok, -1])[0],
               "prev_step": None, "spearman_vs_prev": None, "kendall_vs_prev": None, "leader_changed": None}
        if rows:
            prev = pool.loss[:, j - 1]
            both = ok & np.isfinite(prev)
            rho, tau, _ = rank_correlations(prev[both], at[both])
            row.update(prev_step=rows[-1]["step"], spearman_vs_prev=rho, kendall_vs_prev=tau,
                       leader_changed=row["leaders"] != rows[-1]["leaders"])
        rows.append(row)
    notes = [*_notes(pool), "correlation against the final loss needs `laggrow train-final`"]
    return StabilityResult(curves.source, last, curves.lag_steps, [r["step"] for r in rows],
                           _strategy_curves(curves, pool), pool.excluded, rows, notes)
