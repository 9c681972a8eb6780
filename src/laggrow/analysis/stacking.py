"""A stacking directory's numbers: each method's final loss over seeds, its gap to the best, the
compute it saves against scratch, and what LAG chose at every growth (pure functions of stack.json
and curves.jsonl, as read back; nothing here opens a file).

Why these measures:

- **Seeds are paired.** Every method of one seed starts from the same init seed and reads the
  same batches, so the seed-to-seed noise they share cancels in a per-seed difference. The gap to
  the best method is therefore given with the SE of the paired difference, which is what says
  whether the gap is more than seed noise (the SEs of the two means would overstate it).
- **FLOPs saved at equal loss, against scratch's final loss.** Comparing final losses at equal
  compute answers "which is better for this budget"; the stacking papers (MIDAS, Saunshi et al.
  2024; gradual stacking, Reddi et al. 2023) quote the other side: "X% less compute to reach the
  same loss". The one loss every method can be measured against on its own curve is the one
  scratch ends at, trained with the whole budget: for each seed, the FLOPs at which a method's
  held-out curve first reaches scratch's final loss of that seed, as a share of scratch's total.
  The curves' FLOPs include every probe charged so far, so adaptive pays for its choices. A
  method that never gets there saves nothing measurable, and is counted in no mean: the count of
  seeds that did is reported beside it.
- **Agreement with the fixed rules, and with the loss right after growth.** Each adaptive choice
  is compared with what top stacking and MIDAS would have copied, and with what choosing by the
  loss right after growth (no probe) would pick: the question LAG asks is whether the short probe
  changes the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SCRATCH = "scratch"
ADAPTIVE = "adaptive"


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
    """One (method, seed)'s (flops, eval_loss) points in file order."""
    points = [r for r in rows if r["method"] == method and r["seed"] == seed]
    flops = [_number(r["flops"], f"curves: {method} seed {seed} flops") for r in points]
    losses = [_loss(r["eval_loss"], f"curves: {method} seed {seed} eval_loss") for r in points]
    return flops, losses


def method_summaries(record: dict, rows: list[dict]) -> list[dict]:
    """One dict per method of stack.json (in its order): final loss over seeds with its SE, mean
    compute, the gap to the best method with the SE of the paired per-seed difference, and the
    share of scratch's FLOPs saved in reaching scratch's final loss (see the module docstring).
    A run whose final loss is null (a damaged record) counts in no loss statistic."""
    methods = _list(record, "methods")
    runs = _list(record, "runs")
    by_method: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for run in runs:
        if run["method"] in by_method:
            by_method[run["method"]][run["seed"]] = run
    final: dict[str, dict[int, float]] = {}
    for m, seeds in by_method.items():
        final[m] = {}
        for s, run in seeds.items():
            loss = _loss(run["final_eval_loss"], f"runs: {m} seed {s} final_eval_loss")
            if loss is not None:
                final[m][s] = loss
    means = {m: _mean_se(list(final[m].values())) for m in methods}
    ranked = [m for m in methods if means[m][0] is not None]
    best = min(ranked, key=lambda m: means[m][0]) if ranked else None
    scratch = by_method.get(SCRATCH)

    summaries = []
    for m in methods:
        mean, se = means[m]
        compute = [run["compute"] for run in by_method[m].values()]
        gap = gap_se = None
        if best is not None and mean is not None:
            gap = mean - means[best][0]
            paired = [final[m][s] - final[best][s] for s in final[m] if s in final[best]]
            gap_se = None if m == best else _mean_se(paired)[1]
        saved = saved_seeds = None
        if scratch and m != SCRATCH:
            shares = []
            for s, scratch_loss in final[SCRATCH].items():
                if s not in by_method[m]:
                    continue
                reached = flops_to_reach(*_curve(rows, m, s), scratch_loss)
                if reached is not None:
                    total = _number(scratch[s]["compute"]["total_flops"], f"runs: scratch seed {s} total_flops")
                    shares.append(1.0 - reached / total)
            saved, saved_seeds = _mean_se(shares)[0], len(shares)
        summaries.append({
            "method": m, "n_seeds": len(final[m]), "final_loss": mean, "final_loss_se": se,
            "total_flops": _mean_se([_number(c["total_flops"], f"runs: {m} total_flops") for c in compute])[0],
            "total_tokens": _mean_se([_number(c["total_tokens"], f"runs: {m} total_tokens") for c in compute])[0],
            "gap_to_best": gap, "gap_se": gap_se, "flops_saved": saved, "flops_saved_seeds": saved_seeds})
    return summaries


def _score_key(candidate: dict) -> tuple[bool, float]:
    # lower is better; a candidate without a score (diverged) sorts last
    score = _loss(candidate["score"], f"candidate {candidate['name']} score")
    return (score is None, score if score is not None else 0.0)


def _init_choice(candidates: list[dict]) -> str | None:
    """What choosing by the loss right after growth would pick: the lowest among candidates that
    did not diverge (the first of a tie); None if none has a loss."""
    best: tuple[float, str] | None = None
    for c in candidates:
        loss = _loss(c["loss_at_growth"], f"candidate {c['name']} loss_at_growth")
        if c["diverged"] or loss is None:
            continue
        if best is None or loss < best[0]:
            best = (loss, c["name"])
    return None if best is None else best[1]


def choice_rows(record: dict) -> list[dict]:
    """One row per growth (stage >= 2) and seed of the adaptive method, by stage then seed: the
    choice, what top stacking and MIDAS would have copied, what the loss right after growth would
    have chosen, and the candidates by score (best first). Empty without an adaptive method."""
    out = []
    for run in _list(record, "runs"):
        if run["method"] != ADAPTIVE:
            continue
        for choice in run["choices"]:
            candidates = sorted(choice["candidates"], key=_score_key)
            out.append({
                "stage": choice["stage"], "seed": run["seed"], "depth": choice["depth"],
                "chosen": choice["chosen"], "top": choice["top"], "middle": choice["middle"],
                "agrees_top": choice["chosen"] == choice["top"],
                "agrees_middle": choice["chosen"] == choice["middle"],
                "init_choice": _init_choice(choice["candidates"]),
                "candidates": [{"name": c["name"],
                                "probe_loss": _loss(c["probe_loss"], f"candidate {c['name']} probe_loss"),
                                "loss_at_growth": _loss(c["loss_at_growth"], f"candidate {c['name']} loss_at_growth"),
                                "diverged": bool(c["diverged"])} for c in candidates]})
    return sorted(out, key=lambda r: (r["stage"], r["seed"]))
