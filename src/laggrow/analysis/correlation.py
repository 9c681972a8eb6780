"""How early does the ranking of growth strategies settle? Pool records in, statistics out.

Input is a `Curves` (see curves.py: the records of one pool as arrays). Everything here is a
pure function over numpy arrays; rendering lives in `report/`. The rules chosen, also stated in
the output:

- The ranked unit is the *strategy*. Its loss at every step is the mean over its seeds; the
  per-seed correlations and every strategy's final loss by seed are reported.
- **Choices read the selection set, results the test set** (data.split_heldout). The ranking at a
  step k is by the selection-set loss there (or a predictor's score of the selection curve up to
  k); it is compared with the *test-set* loss at the final step T, and every regret, gap and best
  set is a test-set number. Records made before the held-out set was split have one set; then
  both read it, and a note says so.
- A candidate without a finite loss at the final step (diverged, or not trained that far) is left
  out of every statistic, and said so.
- **Ties** (noise.py): losses closer than float rounding, or than `noise.Z` paired evaluation
  standard errors (when the records hold per-window losses and the ranking is by the loss), are
  tied. Tie groups share a rank; top-1 / top-3 are hit probabilities with ties at k broken
  uniformly at random, and regret is the mean over the tied leaders at k. The final best are the
  strategies tied for the lowest final loss.
- **The best set** (`noise.best_set`): the strategies whose final loss cannot be told from the
  best's, paired over seeds and windows. A pick is judged by whether it lands there
  (`in_best_set`: the probability that it does, ties at k broken at random).
- **Little lag**: the smallest evaluated step k before the final step such that at k and at every
  later step before the final, Spearman rho >= threshold and the pick lands in the best set for
  sure. With a regret tolerance given instead, the pick's regret must be within it.
- **Share of spread**: a regret over the spread of final losses of the growth strategies (a
  from-scratch baseline left out when at least two others remain: alone it would set the spread).
- Bootstrap intervals (95%, percentile) resample strategies and, within each, its seeds; ties are
  taken with the point estimate's tolerances.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from laggrow.analysis import noise
from laggrow.analysis.curves import Curves, has_finals, load_curves, resolve_final_step, steps_with_loss
from laggrow.analysis.predictors import get_predictor, score_curves
from laggrow.analysis.rank_stats import (
    CI_LEVEL,
    batch_kendall,
    batch_pearson,
    batch_spearman,
    finite_or_none,
    interval,
    rank_correlations,
)
from laggrow.errors import LaggrowError
from laggrow.resources import SEED_MAX, check_bootstrap

# Re-exported: a command needs only this module to go from a directory to a result.
__all__ = ["Curves", "load_curves", "has_finals", "resolve_final_step", "correlate", "ranking_stability"]

SCHEMA = "laggrow.correlation/2"  # what correlation.json says it holds; another is made again
ROUNDING = 1e-9  # slack for floating-point rounding when comparing with the threshold and tolerance
SCRATCH = "scratch"  # the from-scratch baseline: left out of the spread a regret is a share of


# ---- strategies as ranked units ---------------------------------------------------------------

@dataclass(frozen=True)
class _Pool:
    """The strategies that can be ranked up to step index `last`, and who was left out and why."""

    names: list[str]
    members: list[np.ndarray]  # rows of curves.loss (candidates) of each strategy
    loss: np.ndarray  # (strategies, steps up to last): selection loss (or score), mean over seeds
    windows: np.ndarray | None  # (strategies, steps, windows): selection per-window losses, mean over seeds
    final: np.ndarray  # (strategies,): the reported final loss (test set when recorded), mean over seeds
    final_by_seed: list[dict[int, float]]  # per strategy: seed -> final loss
    final_windows: list[np.ndarray] | None  # per strategy: (seeds, windows) final per-window losses
    reported_on: str  # "test", or "selection" where the test set was not read at the last step
    test_recorded: bool  # whether the records hold a test set at all
    last_step: int
    excluded: list[dict]

    def final_tolerances(self) -> np.ndarray:
        windows = None if self.final_windows is None else np.stack([w.mean(axis=0) for w in self.final_windows])
        return noise.tie_tolerances(self.final, windows)

    def step_tolerances(self, j: int) -> np.ndarray:
        return noise.tie_tolerances(self.loss[:, j], None if self.windows is None else self.windows[:, j])


def _final_arrays(curves: Curves, last: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The loss results are reported on at step index `last`, its per-window losses, and which
    set that is: the test set where it was evaluated there (pools read it at T), else the
    selection set."""
    if curves.test is not None and np.isfinite(curves.test[:, last]).any():
        return curves.test, curves.test_windows, "test"
    return curves.loss, curves.windows, "selection"


def rankable_pool(curves: Curves, last_step: int, windows: bool = True) -> _Pool:
    """The strategies with a loss at `last_step` (selection and reported), averaged over seeds.
    `windows` False leaves the per-step windows out (a predictor's scores are not losses)."""
    last = int(np.searchsorted(curves.steps, last_step))
    final_loss, final_windows, reported_on = _final_arrays(curves, last)
    rows, excluded = [], []
    for r, cand in enumerate(curves.candidates):
        if np.isfinite(curves.loss[r, last]) and np.isfinite(final_loss[r, last]):
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
    step_windows = None
    if windows and curves.windows is not None:
        step_windows = np.stack([curves.windows[m, : last + 1].mean(axis=0) for m in members])
    by_seed = [{curves.candidates[r].seed: float(final_loss[r, last]) for r in m} for m in members]
    seed_windows = None
    if final_windows is not None and all(np.isfinite(final_windows[m, last]).all() for m in members):
        seed_windows = [final_windows[m, last] for m in members]
    final = np.array([final_loss[m, last].mean() for m in members])
    test_recorded = curves.test is not None or curves.split
    return _Pool(names, members, loss, step_windows, final, by_seed, seed_windows, reported_on, test_recorded,
                 int(curves.steps[last]), excluded)


def _notes(pool: _Pool, results: bool = True) -> list[str]:
    """What was left out, and (for `results`) which set the results read."""
    notes = [f"left out of every statistic: {e['strategy']} seed {e['seed']} (candidate {e['candidate']}), "
             f"{e['reason']}" for e in pool.excluded]
    if not results:
        return notes
    if pool.reported_on == "selection" and not pool.test_recorded:
        notes.append("these records have one held-out set (probed before laggrow split it into a selection "
                     "and a test set): choices and results read the same windows")
    elif pool.reported_on == "selection":
        notes.append(f"no test-set loss at step {pool.last_step} (a pool reads its test set at T): the results "
                     "at this step read the selection set, the one the choices read")
    return notes


def ranks_by_step(pool: _Pool) -> np.ndarray:
    """Rank of each strategy (rows) at each step (columns): 1 = lowest, tie groups share the best rank."""
    ranks = np.full(pool.loss.shape, np.nan)
    for j in range(pool.loss.shape[1]):
        ok = np.flatnonzero(np.isfinite(pool.loss[:, j]))
        tol = pool.step_tolerances(j)[np.ix_(ok, ok)]
        ranks[ok, j] = noise.tied_ranks(pool.loss[ok, j], tol)
    return ranks


def _leaders(names: list[str], at: np.ndarray, tol: np.ndarray) -> list[str]:
    ok = np.flatnonzero(np.isfinite(at))
    if not len(ok):
        return []
    return [names[ok[i]] for i in noise.leaders(at[ok], tol[np.ix_(ok, ok)])]


def _strategy_curves(curves: Curves, pool: _Pool) -> list[dict]:
    """Per strategy: its candidates and seeds, whether it preserves the function, loss and rank by step."""
    ranks = ranks_by_step(pool)
    out = []
    for u, (name, members) in enumerate(zip(pool.names, pool.members, strict=True)):
        preserving = {curves.candidates[i].function_preserving for i in members}
        out.append({"strategy": name, "candidates": [curves.candidates[i].candidate for i in members],
                    "seeds": [curves.candidates[i].seed for i in members],
                    "function_preserving": preserving.pop() if len(preserving) == 1 else None,
                    "loss": [finite_or_none(float(v)) for v in pool.loss[u]],
                    "rank": [finite_or_none(float(v)) for v in ranks[u]]})
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
    top1: float | None  # probability that the pick here is a final best (ties here broken at random)
    top3: float | None  # probability that a final best is among the three lowest here
    regret: float | None  # final loss of the pick here minus the best final loss (mean over tied leaders)
    regret_frac: float | None  # regret over the growth strategies' spread of final losses
    in_best_set: float | None  # probability that the pick lands in the set that cannot be told from the best
    leaders: list[str]  # the pick: every strategy tied for the lowest here
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
    best_set: dict  # noise.best_set at the final step
    noise: dict  # the evaluation's and the seeds' noise of a final difference, side by side
    bootstrap: dict
    notes: list[str]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}


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
        return {"schema": "laggrow.stability/2", **asdict(self)}


# ---- correlation against the final loss -------------------------------------------------------

def _bootstrap(curves: Curves, pool: _Pool, n_boot: int, seed: int) -> list[dict]:
    """Percentile intervals per step, resampling strategies and, within each, its seeds.

    Seeds are drawn once per replicate for all steps, so a resampled seed's early loss is paired
    with that same seed's final loss, as in the point estimate.
    """
    n_steps = pool.loss.shape[1]
    if n_boot == 0:
        return [{}] * n_steps
    final_loss = _final_arrays(curves, n_steps - 1)[0][:, n_steps - 1]
    rng = np.random.default_rng(seed)
    means = np.empty((len(pool.names), n_boot, n_steps))
    finals = np.empty((len(pool.names), n_boot))
    for u, members in enumerate(pool.members):
        draw = rng.integers(0, len(members), size=(n_boot, len(members)))
        means[u] = curves.loss[members, :n_steps][draw].mean(axis=1)
        finals[u] = final_loss[members][draw].mean(axis=1)
    replicate = np.arange(n_boot)[:, None]
    tol_final = pool.final_tolerances()
    out = []
    for j in range(n_steps):
        valid = np.flatnonzero(np.isfinite(pool.loss[:, j]))
        if len(valid) < 3:
            out.append({})
            continue
        pick = valid[rng.integers(0, len(valid), size=(n_boot, len(valid)))]
        x, y = means[pick, replicate, j], finals[pick, replicate]
        tol_x = pool.step_tolerances(j)[pick[:, :, None], pick[:, None, :]]
        tol_y = tol_final[pick[:, :, None], pick[:, None, :]]
        out.append({"spearman": interval(batch_spearman(x, y, tol_x, tol_y)),
                    "kendall": interval(batch_kendall(x, y, tol_x, tol_y)),
                    "pearson": interval(batch_pearson(x, y))})
    return out


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
    Empty unless at least two seeds each cover three strategies. Ties: float rounding, and the
    candidates' paired window noise where recorded."""
    rows, fi = np.concatenate(pool.members), pool.loss.shape[1] - 1
    final_loss, final_windows, _ = _final_arrays(curves, fi)
    out = {}
    for s in sorted({curves.candidates[r].seed for r in rows}):
        mine = [r for r in rows if curves.candidates[r].seed == s]
        if len(mine) < 3:
            continue
        loss, final = curves.loss[mine, : fi + 1], final_loss[mine, fi]
        tol_final = noise.tie_tolerances(final, None if final_windows is None else final_windows[mine, fi])
        series = []
        for j in range(fi + 1):
            ok = np.flatnonzero(np.isfinite(loss[:, j]))
            tol = noise.tie_tolerances(loss[ok, j], None if pool.windows is None or curves.windows is None
                                       else curves.windows[np.asarray(mine)[ok], j])
            series.append(rank_correlations(loss[ok, j], final[ok], tol, tol_final[np.ix_(ok, ok)])[0])
        out[str(s)] = series
    return out if len(out) >= 2 else {}


def little_lag(steps: list[int], spearman: list[float | None], right: list[bool | None],
               final_step: int, threshold: float) -> int | None:
    """Smallest step k < final_step from which every step before the final has rho >= threshold and
    a pick judged right (`right`); None when the last step before the final fails (never settled)."""
    found = None
    for step, rho, ok in reversed(list(zip(steps, spearman, right, strict=True))):
        if step >= final_step:
            continue
        # with few strategies rho takes rational values (one adjacent swap of 5 gives exactly 0.9),
        # which may come out a rounding error below the threshold: compare with a little slack
        if rho is None or rho < threshold - ROUNDING or not ok:
            break
        found = step
    return found


def contender_spread(names: list[str], final: np.ndarray) -> tuple[float, str]:
    """The spread of final losses a regret is a share of: the growth strategies', scratch left out
    when at least two others remain."""
    keep = np.array([n != SCRATCH for n in names])
    if keep.sum() >= 2 and not keep.all():
        return float(final[keep].max() - final[keep].min()), f"the growth strategies' (`{SCRATCH}` left out)"
    return float(final.max() - final.min()), "every strategy's"


def _step_row(pool: _Pool, j: int, boot: dict, fraction: float, spread: float, best_members: set[str],
              tol_final: np.ndarray, by_seed: dict[str, list[float | None]], step: int) -> StepRow:
    ok = np.flatnonzero(np.isfinite(pool.loss[:, j]))
    at_k, final = pool.loss[ok, j], pool.final[ok]
    tol_k, tol_t = pool.step_tolerances(j)[np.ix_(ok, ok)], tol_final[np.ix_(ok, ok)]
    usable = len(at_k) >= 3
    rho, tau, r = rank_correlations(at_k, final, tol_k, tol_t)
    groups = noise.tie_groups(at_k, tol_k)
    picked = groups[0]
    best = set(noise.leaders(final, tol_t).tolist())
    regret = float(final[picked].mean() - final.min()) if usable else None
    names = [pool.names[i] for i in ok]
    return StepRow(
        step=step, n=len(at_k), spearman=rho, spearman_ci=boot.get("spearman"), kendall=tau,
        kendall_ci=boot.get("kendall"), pearson=r, pearson_ci=boot.get("pearson"),
        top1=noise.hit_probability(groups, best, 1) if usable else None,
        top3=noise.hit_probability(groups, best, 3) if usable else None,
        regret=regret, regret_frac=regret / spread if regret is not None and spread > 0 else None,
        in_best_set=float(np.mean([names[i] in best_members for i in picked])) if usable else None,
        leaders=sorted(names[i] for i in picked), compute_fraction=finite_or_none(float(fraction)),
        settled=False, spearman_by_seed={s: v[j] for s, v in by_seed.items()} if by_seed else None)


def scored(curves: Curves, final_step: int, predictor: str) -> Curves:
    """`curves` with every selection loss before the final step replaced by predictor `predictor`'s
    score of the candidate's selection curve up to there (lower is better), and the final step's
    kept. A strategy's score is then the mean of its seeds' scores, as its loss is for `loss`. The
    reported final losses (test set) are untouched."""
    if predictor == "loss":
        return curves
    scores = score_curves(curves.steps, curves.loss, final_step, predictor)
    fi = int(np.searchsorted(curves.steps, final_step))
    scores[:, fi:] = curves.loss[:, fi:]
    return replace(curves, loss=scores)


def noise_summary(pool: _Pool, best: dict) -> dict:
    """The evaluation's and the seeds' noise of a final difference (noise.noises_of_a_difference),
    with the evaluation's SE of one final loss, the windows and the seeds behind them."""
    single = None
    if pool.final_windows is not None:
        single = float(np.median([noise.se_over_windows(w) for seeds in pool.final_windows for w in seeds]))
    return {"reported_on": pool.reported_on,
            "windows": None if pool.final_windows is None else int(pool.final_windows[0].shape[1]),
            "seeds": max(len(m) for m in pool.members), "eval_se_of_a_loss": single,
            **noise.noises_of_a_difference(best)}


def _noise_notes(summary: dict) -> list[str]:
    notes = []
    if summary["seed_se_of_a_difference"] is None:
        notes.append("one seed per strategy: the seed noise of a difference is not measured, and the best set "
                     "reflects the evaluation's noise alone")
    if summary["eval_se_of_a_difference"] is None:
        notes.append("no per-window losses recorded: the evaluation's noise is not measured, and ties are "
                     "only those of float rounding")
    elif summary["eval_below_seed_noise"] is False:
        notes.append(f"the held-out set is too small for these differences: its paired SE of a final "
                     f"difference ({summary['eval_se_of_a_difference']:.2g}) is not below the seed noise "
                     f"({summary['seed_se_of_a_difference']:.2g}); raise data.eval_batches")
    return notes


def correlate(curves: Curves, final_step: int | None = None, threshold: float = 0.9,
              regret_tol: float | None = None, n_boot: int = 1000, seed: int = 0,
              predictor: str = "loss") -> CorrelationResult:
    """Rank correlations, top-k hits, the regret and the best-set hit of choosing at each
    evaluated step by `predictor` (see predictors.py; `loss`, LAG's, ranks by the selection loss
    there), against the final test loss; the best set and the little lag. Raises LaggrowError
    when nothing can be computed."""
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
    pool = rankable_pool(curves, final_step, windows=predictor == "loss")
    # what the bootstrap allocates, before it does
    check_bootstrap(n_boot, len(pool.names), pool.loss.shape[1], max((len(m) for m in pool.members), default=0),
                    what="bootstrap resamples")
    spread, spread_of = contender_spread(pool.names, pool.final)
    best = noise.best_set(pool.names, dict(zip(pool.names, pool.final_by_seed, strict=True)),
                          None if pool.final_windows is None else dict(zip(pool.names, pool.final_windows,
                                                                           strict=True)))
    fractions, basis = _compute_fractions(curves, pool)
    boot, by_seed = _bootstrap(curves, pool, n_boot, seed), _per_seed_spearman(curves, pool)
    steps = [int(s) for s in curves.steps[: pool.loss.shape[1]]]
    tol_final = pool.final_tolerances()
    rows = [_step_row(pool, j, boot[j], fractions[j], spread, set(best["members"]), tol_final, by_seed, step)
            for j, step in enumerate(steps)]
    if regret_tol is not None:
        right = [r.regret is not None and r.regret <= regret_tol + ROUNDING for r in rows]
        rule = f"regret <= {regret_tol:.3g} (given)"
    else:
        right = [r.in_best_set is not None and r.in_best_set >= 1 - ROUNDING for r in rows]
        rule = f"the pick lands in the best set ({best['rule']})"
    lag = little_lag(steps, [r.spearman for r in rows], right, final_step, threshold)
    for row in rows:
        row.settled = lag is not None and lag <= row.step < final_step
    summary = noise_summary(pool, best)
    notes = _notes(pool) + _noise_notes(summary)
    if curves.final_steps is not None and final_step < curves.final_steps:
        notes.append(f"final step {final_step} is short of the planned {curves.final_steps}: "
                     "train-final has not finished, or an earlier final step was asked for")
    strategies = _strategy_curves(curves, pool)
    final_ranks = noise.tied_ranks(pool.final, tol_final)
    for u, (entry, members) in enumerate(zip(strategies, pool.members, strict=True)):
        by = pool.final_by_seed[u]
        entry["final_loss"] = float(pool.final[u])
        entry["final_rank"] = float(final_ranks[u])
        entry["final_loss_by_seed"] = {str(s): v for s, v in sorted(by.items())}
        entry["final_loss_sd"] = float(np.std(list(by.values()), ddof=1)) if len(members) > 1 else None
        entry["in_best_set"] = entry["strategy"] in best["members"]
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
                    "rule": rule, "regret_tol": regret_tol, "spread_of": spread_of, "spread": spread},
        best_set=best, noise=summary,
        bootstrap={"n": n_boot, "seed": seed, "ci_level": CI_LEVEL,
                   "resampled": "strategies, and seeds within each strategy"},
        notes=notes)


# ---- without finals: how stable is the ranking between successive steps -----------------------

def ranking_stability(curves: Curves) -> StabilityResult:
    """Spearman and Kendall between successive evaluated steps and Spearman against the last one,
    and whether the leaders changed: what can be said before train-final. All on the selection set
    (nothing is reported as a result yet); ties as in `correlate`."""
    reached = steps_with_loss(curves)
    if len(reached) == 0:
        raise LaggrowError(f"{curves.source}: no record has a finite eval_loss; expected a probed pool")
    last = int(reached.max())
    pool = rankable_pool(curves, last)
    tol = [pool.step_tolerances(j) for j in range(pool.loss.shape[1])]
    rows: list[dict] = []
    for j, step in enumerate(curves.steps[: pool.loss.shape[1]]):
        at = pool.loss[:, j]
        ok = np.flatnonzero(np.isfinite(at))
        row = {"step": int(step), "leaders": _leaders(pool.names, at, tol[j]),
               "spearman_vs_last": rank_correlations(at[ok], pool.loss[ok, -1], tol[j][np.ix_(ok, ok)],
                                                     tol[-1][np.ix_(ok, ok)])[0],
               "prev_step": None, "spearman_vs_prev": None, "kendall_vs_prev": None, "leader_changed": None}
        if rows:
            prev = pool.loss[:, j - 1]
            both = np.flatnonzero(np.isfinite(at) & np.isfinite(prev))
            rho, tau, _ = rank_correlations(prev[both], at[both], tol[j - 1][np.ix_(both, both)],
                                            tol[j][np.ix_(both, both)])
            row.update(prev_step=rows[-1]["step"], spearman_vs_prev=rho, kendall_vs_prev=tau,
                       leader_changed=row["leaders"] != rows[-1]["leaders"])
        rows.append(row)
    notes = [*_notes(pool, results=False), "correlation against the final loss needs `laggrow train-final`"]
    return StabilityResult(curves.source, last, curves.lag_steps, [r["step"] for r in rows],
                           _strategy_curves(curves, pool), pool.excluded, rows, notes)
