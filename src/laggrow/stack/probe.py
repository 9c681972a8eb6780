"""One growth of a stacked run: grow the train state by a candidate, and LAG's choice among several.

A candidate (stack.config.Candidate) is a layer plan; the train state (params, AdamW state, the
global step) goes through it whole: the params by `growth.grow_with_plan`, the moments by
`growth.grow_opt_state_with_plan` (a copied layer takes its source's moments, a new one zeros) or a
fresh optimizer state (`optimizer_state: reset`), and in both cases the learning-rate schedule stays
at the run's global step: there is one schedule over the whole budget, never a restart at a growth.

The probe trains every candidate K steps together, in the pool's vmapped and guarded step (a
candidate that diverges is frozen and loses), on the very batches the winner then continues with,
at the learning rate the global schedule has there; the winner is the lowest score of the
predictor over the candidates' probe curves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from laggrow import interrupt, train
from laggrow.config import ModelConfig, TrainConfig
from laggrow.errors import LaggrowError
from laggrow.growth.depth import Slot
from laggrow.growth.transform import grow_opt_state_with_plan, grow_with_plan
from laggrow.pool.step import PoolRunner, candidate_state, stack, take
from laggrow.stack.config import Candidate

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
    curves: dict[int, np.ndarray]  # probe step (since the growth) -> every candidate's held-out loss
    scores: np.ndarray  # the predictor's value per candidate (NaN: diverged)
    diverged: np.ndarray  # bool per candidate
    train_loss: float  # the winner's train loss at the probe's last step


def probe(states: list[State], model_cfg: ModelConfig, train_cfg: TrainConfig,
          batch: Callable[[int], np.ndarray], eval_batches: np.ndarray, eval_steps: list[int],
          predictor: Callable[[np.ndarray, np.ndarray, int], float], horizon: int) -> ProbeResult:
    """Train the grown `states` (all at one global step g) together to g + K, K = eval_steps[-1],
    evaluating at g + each of `eval_steps`; score each candidate's curve with `predictor` (steps
    since the growth, `horizon` the step its stage ends at, since the growth) and keep the lowest.
    `batch(i)` is global batch i, the same for every candidate. Honours Ctrl-C between steps by
    raising `interrupt.Interrupted` (nothing of a probe is kept)."""
    n = len(states)
    g = int(states[0]["step"])
    # the pool's own bookkeeping (lr_scale 1, healthy), at the global step the growth happened at
    pool = stack([{**candidate_state(s["params"], s["opt_state"], 1.0), "step": s["step"]} for s in states])

    def same_batch(i: int) -> np.ndarray:
        one = batch(i)
        return np.broadcast_to(one, (n, *one.shape))

    runner = PoolRunner(model_cfg, train_cfg, same_batch, eval_batches)
    curves = {0: runner.evaluate(pool)}
    position, train_losses = g, np.full(n, np.nan)
    for mark in eval_steps[1:]:
        pool, train_losses, position = runner.advance_until(pool, position, g + mark, interrupt.requested)
        if position < g + mark:
            raise interrupt.Interrupted("stopped in a probe")
        curves[mark] = runner.evaluate(pool)
    diverged = np.asarray(pool["diverged_at"]) >= 0
    steps = np.asarray(sorted(curves))
    scores = np.full(n, np.nan)
    for c in range(n):
        losses = np.asarray([curves[s][c] for s in steps])
        seen = np.isfinite(losses)
        if not diverged[c] and seen.any():
            scores[c] = predictor(steps[seen], losses[seen], horizon)
    if not np.isfinite(scores).any():
        raise LaggrowError(f"every candidate of the probe at step {g} diverged (expected at least one finite "
                           "probe; lower train.lr?)")
    winner = int(np.nanargmin(scores))  # ties: the first in the candidates' order
    chosen = take(pool, np.asarray(winner))
    state = {k: v for k, v in chosen.items() if k not in ("lr_scale", "diverged_at")}
    return ProbeResult(winner, state, curves, scores, diverged, float(train_losses[winner]))


def choice_record(stage: int, step: int, from_depth: int, depth: int, candidates: list[Candidate],
                  chosen: int, top: str, middle: str, predictor: str | None,
                  loss_at_growth: list[float], probe_loss: list[float | None] | None = None,
                  scores: list[float | None] | None = None, diverged: list[bool] | None = None) -> dict[str, Any]:
    """One growth as stack.json records it (see docs/design.md, "Stacking")."""
    rows = []
    for i, c in enumerate(candidates):
        rows.append({**c.to_dict(), "loss_at_growth": _finite(loss_at_growth[i]),
                     "probe_loss": None if probe_loss is None else _finite(probe_loss[i]),
                     "score": None if scores is None else _finite(scores[i]),
                     "diverged": bool(diverged[i]) if diverged is not None else False})
    return {"stage": stage, "step": step, "from_depth": from_depth, "depth": depth,
            "chosen": candidates[chosen].name, "top": top, "middle": middle, "predictor": predictor,
            "probed": probe_loss is not None, "candidates": rows}


def _finite(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
