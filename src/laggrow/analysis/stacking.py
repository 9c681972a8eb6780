"""A stacking directory's numbers: each method's final test loss over seeds with its noise, its gap
to the best, the methods that cannot be told from the best, the compute it saves against
same-budget baselines, and what LAG chose at every growth (pure functions of stack.json and
curves.jsonl, as read back; nothing here opens a file).

Why these measures:

- **Test set, not selection set.** Adaptive chooses on the selection set's windows; every loss
  here is the test set's (curves.jsonl's `test_loss`, stack.json's `final_test_loss`), which no
  choice read, so adaptive's final loss is not flattered by the windows it chose on.
- **Equal FLOPs.** Every method trained to the same budget (stack.json's `budget`), so final
  losses compare methods at equal compute.
- **Two noises, both paired.** Every method of one seed starts from the same init seed and reads
  the same batches, and every model is evaluated on the same test windows: a gap to the best is a
  per-seed difference (its SE over seeds) of losses read window by window (its SE over windows),
  the two combined in quadrature (`noise.best_set`). The methods within `noise.Z` of those SEs of
  the best cannot be told from it. With one seed, seed noise is not measured.
- **FLOPs saved at equal loss, against same-budget baselines.** The stacking papers (MIDAS,
  Saunshi et al. 2024; gradual stacking, Reddi et al. 2023) quote "X% less compute to reach the
  same loss". For each seed, the FLOPs at which a method's test curve first reaches a baseline's
  final test loss of that seed, as a share of the baseline's total: against scratch for every
  method, and for adaptive also against top (gradual stacking), both trained to the same budget.
  The curves' FLOPs include every probe charged so far, so adaptive pays for its choices. A method
  that never gets there saves nothing measurable, and is counted in no mean: the count of seeds
  that did is reported beside it.
- **Agreement with the fixed rules, and with the loss right after growth.** Each adaptive choice
  is compared with what top stacking and MIDAS would have copied, and with what choosing by the
  selection loss right after growth (no probe) would pick: the question LAG asks is whether the
  short probe changes the choice. The candidates tied with the chosen one are listed: the probe
  could not tell them from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from laggrow.analysis import noise

SCRATCH = "scratch"
ADAPTIVE = "adaptive"
TOP = "top"

def _number(value: Any, what: str) -> float:
    """A record's number as a float; a string, a bool or a list where a number belongs is damage
    (TypeError, which the writer turns into one line)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what}: expected a number, got {value!r}")
    return float(value)


def _loss(value: Any, what: str) -> float | None:
    """A loss that may be null (or non-finite): None then, else the number."""
    if value is None:
        return None
    loss = _number(value, what)
    return loss if math.isfinite(loss) else None


def _list(record: dict, key: str) -> list:
    value = record[key]
    if not isinstance(value, list):
        raise TypeError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def flops_to_reach(flops: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The FLOPs at which a curve (its points in order) first has loss <= target, linearly
    interpolated in FLOPs between the last point above the target and the first at or below it;
    a point exactly at the target gives its own FLOPs, and a curve already there at its first
    point gives that point's. None if it never gets there. Points without a finite loss (a null
    or NaN evaluation) are skipped, so the interpolation bridges them."""
    previous: tuple[float, float] | None = None
    for f, loss in zip(flops, losses, strict=True):
        if loss is None or not math.isfinite(loss):
            continue
        if loss <= target:
            if previous is None or loss == target:
                return float(f)
            f0, l0 = previous  # l0 > target > loss
            return f0 + (f - f0) * (l0 - target) / (l0 - loss)
        previous = (float(f), float(loss))
    return None


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean, and its standard error (sample sd / sqrt(n); None for fewer than two values)."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) >= 2 else None
    return float(array.mean()), se


def _curve(rows: list[dict], method: str, seed: int) -> tuple[list[float], list[float | None]]:
    """One (method, seed)'s (flops, test_loss) points in file order."""
    points = [r for r in rows if r["method"] == method and r["seed"] == seed]
    flops = [_number(r["flops"], f"curves: {method} seed {seed} flops") for r in points]
    losses = [_loss(r["test_loss"], f"curves: {method} seed {seed} test_loss") for r in points]
    return flops, losses


def _windows(run: dict, what: str) -> np.ndarray | None:
    """A run's per-window final test losses, or None when any is missing or not finite."""
    values = _list(run, "final_test_windows")
    windows = np.asarray([_number(v, what) for v in values], np.float64)
    return windows if windows.size and np.isfinite(windows).all() else None


def _final_windows(method: str, runs: dict[int, dict], final: dict[int, float]) -> np.ndarray | None:
    """(seeds, windows): the per-window final test losses of a method's seeds with a final loss;
    None when a seed has none or their windows differ in number."""
    rows = [_windows(runs[s], f"runs: {method} seed {s} final_test_windows") for s in sorted(final)]
    if not rows or any(w is None for w in rows) or len({w.shape for w in rows}) != 1:
        return None
    return np.stack(rows)


def _finals(record: dict) -> tuple[list[str], dict[str, dict[int, dict]], dict[str, dict[int, float]]]:
    """The methods, their runs by seed, and their final test losses by seed (a null left out)."""
    methods = _list(record, "methods")
    by_method: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for run in _list(record, "runs"):
        if run["method"] in by_method:
            by_method[run["method"]][run["seed"]] = run
    final = {m: {} for m in methods}
    for m, seeds in by_method.items():
        for s, run in seeds.items():
            loss = _loss(run["final_test_loss"], f"runs: {m} seed {s} final_test_loss")
            if loss is not None:
                final[m][s] = loss
    return methods, by_method, final


def best_methods(record: dict) -> dict | None:
    """`noise.best_set` over the methods with a final test loss: the best and every method that
    cannot be told from it, the SE of each gap combining the paired seed and window noise, and
    (`noise`) the two noises side by side. None when no method has a final loss."""
    methods, by_method, final = _finals(record)
    ranked = [m for m in methods if final[m]]
    if not ranked:
        return None
    windows = {m: w for m in ranked if (w := _final_windows(m, by_method[m], final[m])) is not None}
    best = noise.best_set(ranked, {m: final[m] for m in ranked}, windows or None)
    return {**best, "noise": noise.noises_of_a_difference(best)}


def _flops_saved(rows: list[dict], by_method: dict, final: dict, method: str,
                 baseline: str) -> tuple[float | None, int | None]:
    """The mean over seeds of the share of `baseline`'s total FLOPs that `method` did not need to
    reach `baseline`'s final test loss of the same seed, and how many seeds reached it; (None,
    None) where there is no such baseline."""
    if baseline not in by_method or method == baseline:
        return None, None
    shares = []
    for s, target in final[baseline].items():
        if s not in by_method[method]:
            continue
        reached = flops_to_reach(*_curve(rows, method, s), target)
        if reached is not None:
            total = _number(by_method[baseline][s]["compute"]["total_flops"],
                            f"runs: {baseline} seed {s} total_flops")
            shares.append(1.0 - reached / total)
    return _mean_se(shares)[0], len(shares)


def method_summaries(record: dict, rows: list[dict]) -> list[dict]:
    """One dict per method of stack.json (in its order): its steps, final test loss over seeds with
    its SE over seeds and the test set's SE over windows, mean compute, the gap to the best method
    with its SEs (paired over seeds, paired over windows, combined) and whether it can be told from
    the best, and the FLOPs saved against scratch (and, for adaptive, against top) at their final
    loss (see the module docstring). A run whose final loss is null (a damaged record) counts in
    no loss statistic."""
    methods, by_method, final = _finals(record)
    best = best_methods(record)
    compared = {c["strategy"]: c for c in best["comparisons"]} if best else {}
    summaries = []
    for m in methods:
        mean, se = _mean_se(list(final[m].values()))
        runs = [by_method[m][s] for s in sorted(by_method[m])]
        compute = [run["compute"] for run in runs]
        windows = _final_windows(m, by_method[m], final[m])
        # the seeds' mean loss, window by window, as the final loss is their mean
        window_se = None if windows is None else noise.se_over_windows(windows.mean(axis=0))
        c = compared.get(m)
        saved, saved_seeds = _flops_saved(rows, by_method, final, m, SCRATCH)
        saved_top, saved_top_seeds = _flops_saved(rows, by_method, final, m, TOP) if m == ADAPTIVE else (None, None)
        summaries.append({
            "method": m, "n_seeds": len(final[m]),
            "steps": sorted({int(_number(run["steps"], f"runs: {m} steps")) for run in runs}),
            "final_loss": mean, "final_loss_se": se, "final_loss_window_se": window_se,
            "total_flops": _mean_se([_number(c_["total_flops"], f"runs: {m} total_flops") for c_ in compute])[0],
            "total_tokens": _mean_se([_number(c_["total_tokens"], f"runs: {m} total_tokens") for c_ in compute])[0],
            "best": best is not None and m == best["best"],
            "gap_to_best": None if c is None else c["diff"], "gap_se": None if c is None else c["se"],
            "gap_seed_se": None if c is None else c["seed_se"], "gap_eval_se": None if c is None else c["eval_se"],
            "indistinguishable": None if c is None else c["indistinguishable"],
            "flops_saved": saved, "flops_saved_seeds": saved_seeds,
            "flops_saved_vs_top": saved_top, "flops_saved_vs_top_seeds": saved_top_seeds})
    return summaries


def _score_key(candidate: dict) -> tuple[bool, float]:
    # lower is better; a candidate without a score (diverged) sorts last
    score = _loss(candidate["score"], f"candidate {candidate['name']} score")
    return (score is None, score if score is not None else 0.0)


def _init_choice(candidates: list[dict]) -> str | None:
    """What choosing by the selection loss right after growth would pick: the lowest among
    candidates that did not diverge (the first of a tie); None if none has a loss."""
    best: tuple[float, str] | None = None
    for c in candidates:
        loss = _loss(c["selection_loss_at_growth"], f"candidate {c['name']} selection_loss_at_growth")
        if c["diverged"] or loss is None:
            continue
        if best is None or loss < best[0]:
            best = (loss, c["name"])
    return None if best is None else best[1]


def choice_rows(record: dict) -> list[dict]:
    """One row per growth (stage >= 2) and seed of the adaptive method, by stage then seed: the
    choice and the candidates tied with it, what top stacking and MIDAS would have copied, what the
    selection loss right after growth would have chosen, and the candidates by score (best first)
    with their selection losses. Empty without an adaptive method."""
    out = []
    for run in _list(record, "runs"):
        if run["method"] != ADAPTIVE:
            continue
        for choice in run["choices"]:
            candidates = sorted(choice["candidates"], key=_score_key)
            out.append({
                "stage": choice["stage"], "seed": run["seed"], "depth": choice["depth"],
                "chosen": choice["chosen"], "tied": [str(t) for t in _list(choice, "tied")],
                "top": choice["top"], "middle": choice["middle"],
                "agrees_top": choice["chosen"] == choice["top"],
                "agrees_middle": choice["chosen"] == choice["middle"],
                "init_choice": _init_choice(choice["candidates"]),
                "candidates": [_candidate_row(c) for c in candidates]})
    return sorted(out, key=lambda r: (r["stage"], r["seed"]))


def _candidate_row(c: dict) -> dict:
    name = c["name"]
    return {"name": name,
            "probe_loss": _loss(c["selection_probe_loss"], f"candidate {name} selection_probe_loss"),
            "probe_loss_se": _loss(c["selection_probe_loss_se"], f"candidate {name} selection_probe_loss_se"),
            "loss_at_growth": _loss(c["selection_loss_at_growth"], f"candidate {name} selection_loss_at_growth"),
            "diverged": bool(c["diverged"])}
