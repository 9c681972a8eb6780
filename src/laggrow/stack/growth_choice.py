"""One growth of a stacked run: grow the train state by a candidate, and LAG's choice among several.

A candidate (stack.plan.Candidate) is a layer plan; the train state (params, AdamW state, the
global step) goes through it whole: the params by `growth.grow_with_plan`, the moments by
`growth.grow_opt_state_with_plan` (a copied layer takes its source's moments, a new one zeros) or a
fresh optimizer state (`optimizer_state: reset`), and in both cases the learning-rate schedule stays
at the run's global step: there is one schedule over the whole budget, never a restart at a growth.

The probe trains every candidate K steps together, in the pool's vmapped and guarded step (a
candidate that diverges is frozen and loses), on the very batches the winner then continues with,
at the learning rate the global schedule has there; it evaluates the candidates on the selection
set's windows only (data.split_heldout: the test set, on which results are reported, is never
passed to it) and keeps the lowest score of the predictor over the candidates' probe curves.

Ties. The choice itself is deterministic: the first in the candidates' order among the lowest
scores. Candidates whose score is within float rounding of the winner's (noise.FLOAT_RESOLUTION),
or within `noise.Z` paired standard errors over the selection windows of the probe's last
evaluation, are recorded as tied with it: the probe could not tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from laggrow import interrupt, train
from laggrow.analysis import noise
from laggrow.config import ModelConfig, TrainConfig
from laggrow.errors import LaggrowError
from laggrow.growth.depth import Slot
from laggrow.growth.transform import grow_opt_state_with_plan, grow_with_plan
from laggrow.pool.step import PoolRunner, candidate_state, stack, take
from laggrow.stack.plan import Candidate

State = dict


def slots_of(candidate: Candidate) -> list[Slot]:
    """The candidate as growth.depth's plan: copies of old layers, and new layers (zeroed
    output projections for `zero`: the identity; a fresh init for `random`)."""
    slots, seen = [], set()
    for source in candidate.layers:
        if source is None:
            slots.append(Slot(None, copy=True, zero_out=candidate.kind == "zero"))
        else:
            slots.append(Slot(source, copy=source in seen))
            seen.add(source)
    return slots


def grow_state(state: State, candidate: Candidate, src: ModelConfig, dst: ModelConfig, train_cfg: TrainConfig,
               key: jax.Array, optimizer_state: str) -> State:
    """The train state of `dst` grown from `state` (of `src`) by `candidate`, at the same step."""
    slots = slots_of(candidate)
    params = grow_with_plan(state["params"], src, dst, slots, key)
    if optimizer_state == "carry":
        opt_state = grow_opt_state_with_plan(state["opt_state"], src, dst, slots)
    else:
        opt_state = train.schedule_at(train.make_optimizer(train_cfg).init(params), int(state["step"]))
    # committed to the device like a trained or restored state: jit keys its cache on it, and the
    # evaluation right after a growth should share the stage's compiled program
    return jax.device_put({"params": params, "opt_state": opt_state, "step": state["step"]}, jax.devices()[0])


@dataclass
class ProbeResult:
    winner: int
    state: State  # the winner's train state after the probe
    # probe step (since the growth) -> every candidate's loss on every selection window (N, windows)
    curves: dict[int, np.ndarray]
    scores: np.ndarray  # the predictor's value per candidate (NaN: diverged)
    diverged: np.ndarray  # bool per candidate
    train_loss: float  # the winner's train loss at the probe's last step
    tied: list[int]  # the other candidates that cannot be told from the winner (see the module docstring)

    def losses(self, step: int) -> np.ndarray:
        """Every candidate's selection loss at probe step `step`: the mean over windows (NaN: diverged)."""
        return self.curves[step].mean(axis=1)

    def loss_se(self, step: int) -> np.ndarray:
        """Its standard error over the selection windows (NaN: diverged or a single window)."""
        windows = self.curves[step]
        if windows.shape[1] < 2:
            return np.full(len(windows), np.nan)
        return windows.std(axis=1, ddof=1) / np.sqrt(windows.shape[1])


def probe(states: list[State], model_cfg: ModelConfig, train_cfg: TrainConfig,
          batch: Callable[[int], np.ndarray], selection: np.ndarray, eval_steps: list[int],
          predictor: Callable[[np.ndarray, np.ndarray, int], float], horizon: int) -> ProbeResult:
    """Train the grown `states` (all at one global step g) together to g + K, K = eval_steps[-1],
    evaluating every candidate on the `selection` windows (n, B, T+1) at g + each of `eval_steps`;
    score each candidate's curve with `predictor` (steps since the growth, `horizon` the step its
    stage ends at, since the growth) and keep the lowest. `batch(i)` is global batch i, the same
    for every candidate. Honours Ctrl-C between steps by raising `interrupt.Interrupted` (nothing
    of a probe is kept)."""
    n = len(states)
    g = int(states[0]["step"])
    # the pool's own bookkeeping (lr_scale 1, healthy), at the global step the growth happened at
    pool = stack([{**candidate_state(s["params"], s["opt_state"], 1.0), "step": s["step"]} for s in states])

    def same_batch(i: int) -> np.ndarray:
        one = batch(i)
        return np.broadcast_to(one, (n, *one.shape))

    runner = PoolRunner(model_cfg, train_cfg, same_batch, {"selection": selection})
    curves = {0: runner.evaluate(pool)["selection"]}
    position, train_losses = g, np.full(n, np.nan)
    for mark in eval_steps[1:]:
        pool, train_losses, position = runner.advance_until(pool, position, g + mark, interrupt.requested)
        if position < g + mark:
            raise interrupt.Interrupted("stopped in a probe")
        curves[mark] = runner.evaluate(pool)["selection"]
    diverged = np.asarray(pool["diverged_at"]) >= 0
    scores = _scores(curves, diverged, predictor, horizon)
    if not np.isfinite(scores).any():
        raise LaggrowError(f"every candidate of the probe at step {g} diverged (expected at least one finite "
                           "probe; lower train.lr?)")
    winner = int(np.nanargmin(scores))  # ties: the first in the candidates' order
    chosen = take(pool, np.asarray(winner))
    state = {k: v for k, v in chosen.items() if k not in ("lr_scale", "diverged_at")}
    return ProbeResult(winner, state, curves, scores, diverged, float(train_losses[winner]),
                       tied_with(winner, scores, curves[eval_steps[-1]]))


def _scores(curves: dict[int, np.ndarray], diverged: np.ndarray, predictor: Callable, horizon: int) -> np.ndarray:
    """The predictor over each candidate's curve of mean selection losses; NaN for a diverged one."""
    steps = np.asarray(sorted(curves))
    scores = np.full(len(diverged), np.nan)
    for c in range(len(diverged)):
        losses = np.asarray([curves[s][c].mean() for s in steps])
        seen = np.isfinite(losses)
        if not diverged[c] and seen.any():
            scores[c] = predictor(steps[seen], losses[seen], horizon)
    return scores


def tied_with(winner: int, scores: np.ndarray, windows: np.ndarray, z: float = noise.Z) -> list[int]:
    """The candidates other than `winner` whose score is within float rounding of its score, or
    within `z` paired standard errors of the difference of their per-window losses `windows`
    (N, windows) at the probe's end: the evaluation noise of the choice (for the `loss` predictor
    exactly the noise of the score; for the others the noise of the loss they are read from)."""
    tied = []
    for c, score in enumerate(scores):
        if c == winner or not np.isfinite(score):
            continue
        tolerance = noise.float_tolerance(score, scores[winner])
        se = noise.paired_window_se(windows[c], windows[winner])
        if se is not None:
            tolerance = max(tolerance, z * se)
        if score - scores[winner] <= tolerance:
            tied.append(c)
    return tied


def choice_record(stage: int, step: int, from_depth: int, depth: int, candidates: list[Candidate],
                  chosen: int, top: str, middle: str, predictor: str | None,
                  result: ProbeResult | None = None, probe_step: int | None = None) -> dict[str, Any]:
    """One growth as stack.json records it (see docs/design.md, "Stacking"): without `result` a
    growth with nothing to choose (no probe, no losses); with it, every candidate's selection-set
    loss right after the growth and at the probe's end (`probe_step`), its score, and the
    candidates tied with the winner."""
    rows = []
    for i, c in enumerate(candidates):
        row = {**c.to_dict(), "selection_loss_at_growth": None, "selection_probe_loss": None,
               "selection_probe_loss_se": None, "score": None, "diverged": False}
        if result is not None:
            row.update({"selection_loss_at_growth": _finite(result.losses(0)[i]),
                        "selection_probe_loss": _finite(result.losses(probe_step)[i]),
                        "selection_probe_loss_se": _finite(result.loss_se(probe_step)[i]),
                        "score": _finite(result.scores[i]), "diverged": bool(result.diverged[i])})
        rows.append(row)
    tied = [] if result is None else [candidates[i].name for i in result.tied]
    return {"stage": stage, "step": step, "from_depth": from_depth, "depth": depth,
            "chosen": candidates[chosen].name, "tied": tied, "top": top, "middle": middle,
            "predictor": predictor, "probed": result is not None, "candidates": rows}


def _finite(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
