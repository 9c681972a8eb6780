"""Every predictor against every other, and successive halving replayed, over one pool's records.

`compare_predictors` runs `correlate` once per predictor (no bootstrap: the point statistics and
each predictor's little lag are what a comparison needs) and lays the results side by side, step by
step. `replay_halving` asks what successive halving (halving.py) would have chosen from the curves
of a pool trained to the end: with a probe that is the prefix of the final run, a candidate's curve
up to B is the same whether the others were dropped or not, so the replay is what a halving run
(`laggrow probe --halving`) trains, without training it. Both are pure functions of the records.

The halving unit is the strategy, as everywhere in the statistics: its score at a step is the mean
over its seeds of the predictor applied to each seed's curve, and compute is charged per candidate
(a strategy of three seeds trained B steps costs 3 B candidate-steps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from laggrow.analysis.correlation import correlate, rankable_pool, scored
from laggrow.analysis.curves import Curves, resolve_final_step
from laggrow.analysis.halving import curve_from_matrix, halving_budgets, successive_halving
from laggrow.analysis.predictors import Predictor, get_predictor, predictor_names


def compare_predictors(curves: Curves, final_step: int | None = None, threshold: float = 0.9,
                       regret_tol: float | None = None, predictors: list[str] | None = None) -> dict[str, Any]:
    """Per predictor: rho, top-1 and regret at every step, its little lag and that lag's share of
    the final compute, and the same at step 0 and at k (lag_steps, when known)."""
    names = predictors or predictor_names()
    for name in names:
        get_predictor(name)
    final_step = resolve_final_step(curves, final_step)
    results = {name: correlate(curves, final_step, threshold, regret_tol, n_boot=0, predictor=name)
               for name in names}
    first = results[names[0]]
    k = curves.lag_steps if curves.lag_steps in first.steps else None

    def at(result, step: int | None) -> dict[str, Any] | None:
        if step is None or step not in result.steps:
            return None
        row = result.rows[result.steps.index(step)]
        return {"step": step, "spearman": row.spearman, "top1": row.top1, "regret": row.regret,
                "in_best_set": row.in_best_set, "leaders": row.leaders}

    summary = []
    for name, result in results.items():
        predictor = get_predictor(name)
        summary.append({"predictor": name, "kind": predictor.kind, "summary": predictor.summary,
                        "little_lag": result.little_lag["step"],
                        "little_lag_compute": result.little_lag["compute_fraction"],
                        "at_init": at(result, 0), "at_k": at(result, k),
                        "fell_back_at_k": fallbacks(curves, predictor, k, final_step)})
    steps = []
    for j, step in enumerate(first.steps):
        steps.append({"step": step, "compute_fraction": first.rows[j].compute_fraction,
                      **{name: {"spearman": r.rows[j].spearman, "top1": r.rows[j].top1, "regret": r.rows[j].regret,
                                "in_best_set": r.rows[j].in_best_set}
                         for name, r in results.items()}})
    return {"final_step": final_step, "lag_steps": curves.lag_steps, "threshold": threshold,
            "rule": first.little_lag["rule"], "best_set": first.best_set["members"],
            "compute_basis": first.little_lag["compute_basis"], "predictors": summary, "steps": steps}


def fallbacks(curves: Curves, predictor: Predictor, step: int | None, final_step: int) -> dict[str, Any] | None:
    """For a predictor that can fall back to another (`Predictor.fell_back`): of the candidates
    with a selection loss at `step`, how many it fell back on there, and why; None otherwise."""
    if predictor.fell_back is None or step is None or step not in curves.steps:
        return None
    j = int(np.searchsorted(curves.steps, step))
    reasons: dict[str, int] = {}
    ranked = 0
    for row in curves.loss:
        if not np.isfinite(row[j]):
            continue
        ranked += 1
        seen = np.isfinite(row[: j + 1])
        why = predictor.fell_back(curves.steps[: j + 1][seen], row[: j + 1][seen], final_step)
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
    return {"step": int(step), "candidates": ranked, "fell_back": sum(reasons.values()), "reasons": reasons}


def strategy_scores(curves: Curves, final_step: int, predictor: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(strategies, their candidate counts, (strategies x steps) mean-over-seeds scores of the
    selection curves up to the final step): what halving ranks strategies by."""
    pool = rankable_pool(scored(curves, final_step, predictor), final_step, windows=False)
    return pool.names, np.array([len(m) for m in pool.members]), pool.loss


def replay_halving(curves: Curves, eta: int, first: int, predictor: str = "loss",
                   final_step: int | None = None) -> dict[str, Any]:
    """Successive halving over the pool's strategies, decided on its recorded selection curves;
    with the pick's regret on the reported (test) final loss, whether it lands in the best set,
    and its compute against probing everyone k steps and against training everyone to the end
    (candidate-steps; k = lag_steps)."""
    final_step = resolve_final_step(curves, final_step)
    names, seeds, scores = strategy_scores(curves, final_step, predictor)
    steps = curves.steps[: scores.shape[1]]
    # Halving compares scores at its budgets; the "loss" of this oracle is the predictor's score there.
    result = successive_halving(names, curve_from_matrix(names, steps, scores), eta, first, final_step, "loss")
    out = result.to_dict()
    out["predictor"] = predictor
    reported = correlate(curves, final_step, n_boot=0)  # the final losses and the best set, by the loss
    final = {s["strategy"]: s["final_loss"] for s in reported.strategies}
    best = min(final.values())
    members = set(reported.best_set["members"])
    per_seed = dict(zip(names, seeds.tolist(), strict=True))
    halving_cost = sum(result.charged[n] * per_seed[n] for n in names)
    everyone = int(seeds.sum())
    k = curves.lag_steps
    out.update({
        "planned": [list(b) for b in halving_budgets(len(names), eta, first, final_step)],
        "regret": float(final[result.winner] - best),
        "in_best_set": result.winner in members,
        "best": [n for n in names if final[n] == best],
        "best_set": sorted(members),
        "candidate_steps": halving_cost,
        "probe_everyone_k": {"k": k, "candidate_steps": everyone * k if k else None},
        "train_everyone": {"candidate_steps": everyone * final_step},
        "fraction_of_train_everyone": halving_cost / (everyone * final_step),
    })
    if k and k in reported.steps:  # the plain LAG choice at k, for comparison (ties as correlate takes them)
        row = reported.rows[reported.steps.index(k)]
        if row.regret is not None:
            out["probe_everyone_k"].update(regret=row.regret, in_best_set=row.in_best_set, leaders=row.leaders)
    return out


def full_correlation(curves: Curves, final_step: int | None = None, threshold: float = 0.9,
                     regret_tol: float | None = None, n_boot: int = 1000, seed: int = 0, predictor: str = "loss",
                     halving: dict[str, int] | None = None) -> dict[str, Any]:
    """What `laggrow correlate` writes to correlation.json: `correlate` by `predictor`, every
    predictor compared (`predictors`), and successive halving replayed when `halving` gives its
    `first` (and `eta`, default 2)."""
    result = correlate(curves, final_step, threshold, regret_tol, n_boot, seed, predictor).to_dict()
    result["predictors"] = compare_predictors(curves, result["final_step"], threshold, regret_tol)
    result["inputs"] = dict(curves.inputs)  # the records it was made from (experiment.correlation_is_current)
    if halving:
        result["halving"] = replay_halving(curves, int(halving.get("eta", 2)), int(halving["first"]),
                                           predictor, result["final_step"])
    return result
