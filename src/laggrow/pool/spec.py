"""Pool files: which candidates to grow and how to train and evaluate them (no jax here).

    # configs/pools/depth.yaml
    source: runs/small             # a finished `laggrow train` run (relative to the working dir)
    target: {n_layers: 8}          # overrides of the source's model config
    strategies:                    # a name, or a mapping with a name and options
      - stack_middle
      - {name: stack_noise, noise: 0.01}
    seeds: [0, 1]                  # growth randomness and data order of each candidate
    lag_steps: 32                  # k: the probe's length
    final_steps: 512               # T: the full budget; the LR schedule is defined over T
    optimizer_state: carry         # carry (default: AdamW moments through the growth) | reset
    probe_lr: schedule             # schedule | peak (see "Probe protocols" below)
    train: {lr: 0.002}             # overrides of the source's train config after growth
    eval_points: 16                # log-spaced evaluation steps, 0, k and T always included
                                   # (default 16, or final_steps + 1 when T is shorter)
    eval_every: 4                  # also every 4 steps in [0, k] (0: off): what the predictors read
    eval_at: [48, 64]              # and at these steps, each in [0, final_steps]
    test_batches: 16               # the test set: this many batches of data.eval_batch_size windows,
                                   # read at T only (every choice reads the selection set instead)
    halving: {eta: 2, first: 8}    # successive halving (laggrow probe --halving); predictor: loss
    chunk_size: auto               # candidates trained together: auto (default: what the device's
                                   # memory holds, all of them when they fit), 0 (all), or N
    mesh: {candidates: auto, data: auto, fsdp: false}   # the devices it spreads over (laggrow.mesh)

Every candidate (strategy x seed) sees the same batches as every other candidate of its seed and
the same learning-rate schedule, so a probe of k steps is exactly the prefix of the final run.

Probe protocols: how a grown model is trained from growth on, the same for probe and final run.
These keys make one, and pool.json records the resolved protocol:
- `train.warmup_steps`: the post-growth warmup, linear to the peak (default 0: none, the peak at
  once; never the source's warmup);
- `train.warmup_start`: the rate that warmup starts from (default 0); `source_end` re-warms from
  the rate the source's schedule ended at;
- `train.lr` (and `train.schedule`): the peak learning rate and the decay after it; `source_end`
  continues at the rate the source ended at (no jump in the learning rate at the growth);
- `probe_lr`: `schedule` (the final run's schedule from step 0) or `peak` (no warmup, the peak held
  for the k probe steps, then the final decay over the rest: train.warmup_steps 0 and
  train.hold_steps k, so a pool with `peak` sets neither);
- `optimizer_state`: `carry` (default: the source's moments, grown alongside) or `reset` (fresh).
Every protocol here keeps the probe the exact prefix of the final run (`probe_is_prefix` in the
record): the schedule is one function of the step over [0, T].
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laggrow.config import (
    AUTO,
    MeshConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    mesh_config_from_dict,
    run_config_from_dict,
)
from laggrow.config_engine import build_dataclass, coerce, read_yaml, require, shown
from laggrow.errors import LaggrowError
from laggrow.resources import INT32_MAX, MAX_EVAL_POINTS, SEED_MAX, check_training_fits

# The default probe protocol (docs/study.md): no warmup after growth, AdamW's moments carried
# (PoolConfig.optimizer_state); it gave the best final loss and the highest rho at k on both corpora.
DEFAULT_POST_GROWTH_WARMUP = 0

# `train.lr` and `train.warmup_start` of a pool may name the learning rate the source's schedule
# ended at instead of a number (resolved against the source in `target_run_config`).
SOURCE_END = "source_end"
SOURCE_END_KEYS = ("lr", "warmup_start")

# Options a strategy entry may carry besides the growth's own (noise, block, partner).
POOL_ENTRY_KEYS = ("name", "label", "lr_scale")

# The largest float32: a learning rate is one on the device.
FLOAT32_MAX = float(np.finfo(np.float32).max)

# A label names a row of report.md's Markdown tables and a line of the terminal's: no column
# separator, no line break.
LABEL_FORBIDDEN = "|"


@dataclass(frozen=True)
class StrategySpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0  # a learning-rate multiplier for this candidate alone
    label: str = ""  # how records name it; defaults to the name, plus options when ambiguous


@dataclass(frozen=True)
class PoolConfig:
    source: str  # the run grown: trained, grown, imported or a stacking method's model (relative to the working dir)
    strategies: tuple[StrategySpec, ...]  # names, or mappings {name, label, lr_scale, and the strategy's options}
    lag_steps: int  # k: the probe's length in steps
    final_steps: int  # T: the full budget; the learning-rate schedule is defined over T
    target: dict[str, Any] = field(default_factory=dict)  # overrides of the source's model config (n_layers: 8)
    seeds: tuple[int, ...] = (0,)  # growth randomness and data order of each candidate
    # carry (the source's AdamW moments, grown alongside) | reset (fresh): carry gave the best final
    # loss in docs/study.md
    optimizer_state: str = "carry"
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the source's train config after growth
    eval_points: int = 16  # log-spaced evaluated steps; 0, k and T always among them
    probe_lr: str = "schedule"  # schedule (the final run's from step 0) | peak (held over the k steps, then the decay)
    eval_every: int = 0  # also evaluate every this many steps in [0, lag_steps]; 0: off
    eval_at: tuple[int, ...] = ()  # and at these steps
    # The test set every result is reported on (data.split_heldout): batches of data.eval_batch_size
    # windows, evaluated at final_steps only. Larger than the selection set (data.eval_batches),
    # which every evaluated step reads: a final difference must be resolved below the seed noise.
    test_batches: int = 16  # the test set: this many batches of data.eval_batch_size held-out windows, read at T
    halving: dict[str, Any] = field(default_factory=dict)  # {eta, first, predictor} for probe --halving; empty: none
    # candidates trained together; 0: the whole pool at once; "auto": the most that the device's
    # memory holds by resources.py's estimate (all of them when they fit; see `chunk_for`)
    # An execution choice, not part of what the pool is: pool directories are compared without it
    # (records.EXECUTION_KEYS), so a pool probed with one chunk size continues with another.
    chunk_size: int | str = AUTO  # candidates trained together: auto (what memory holds), 0 (all) or N
    checkpoint_every: int = 0  # train-final checkpoints; 0: only at the end
    # the devices the pool spreads over (laggrow.mesh); like chunk_size an execution choice, and
    # written only when set, so pools recorded before it keep their fingerprint
    mesh: MeshConfig = field(default_factory=MeshConfig)  # the devices the pool spreads over (the mesh section)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.mesh == MeshConfig():
            del out["mesh"]
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def candidates(self) -> list[dict[str, Any]]:
        """One entry per (strategy, seed): candidate index, label, strategy spec and seed."""
        out = []
        for spec in self.strategies:
            for seed in self.seeds:
                out.append({"candidate": len(out), "strategy": spec.label, "name": spec.name,
                            "seed": seed, "options": spec.options, "lr_scale": spec.lr_scale})
        return out

    def eval_steps(self) -> list[int]:
        """Log-spaced steps, 0, k and T, the dense grid in [0, k] and `eval_at`; with halving, every
        round's budget too (each round decides on an evaluated step)."""
        steps = set(eval_schedule(self.lag_steps, self.final_steps, self.eval_points))
        if self.eval_every > 0:
            steps.update(range(0, self.lag_steps + 1, self.eval_every))
        steps.update(self.eval_at)
        if self.halving:
            steps.update(b for b, _ in self.halving_budgets())
        return sorted(steps)

    def halving_budgets(self) -> list[tuple[int, int]]:
        from laggrow.analysis.halving import halving_budgets

        h = self.halving
        return halving_budgets(len(self.strategies), h["eta"], h["first"], self.final_steps)

    def protocol(self, target: RunConfig) -> dict[str, Any]:
        """The probe protocol as trained (see the module docstring), for pool.json: `target` is
        `target_run_config`'s result."""
        train = target.train
        return {"probe_lr": self.probe_lr, "optimizer_state": self.optimizer_state,
                "warmup_steps": train.warmup_steps, "warmup_start": train.warmup_start,
                "hold_steps": train.hold_steps, "lr": train.lr, "schedule": train.schedule,
                "min_lr_ratio": train.min_lr_ratio,
                "from_source_end": sorted(k for k in SOURCE_END_KEYS if self.train.get(k) == SOURCE_END),
                # one schedule over [0, T] and the probe's state continued: probe = prefix of the run
                "probe_is_prefix": True}

    def resolved_train(self, source_train: dict[str, Any] | None = None) -> dict[str, Any]:
        """The training overrides after growth, `probe_lr` applied, over `source_train` if given
        (whose schedule's last rate `source_end` then names)."""
        # The post-growth warmup is the pool's, never the source's: 0 unless the pool sets one.
        train = {**(source_train or {}), "warmup_steps": DEFAULT_POST_GROWTH_WARMUP, "warmup_start": 0.0,
                 "hold_steps": 0, **self.train}
        if self.probe_lr == "peak":
            train.update(warmup_steps=0, hold_steps=self.lag_steps)
        if source_train is not None:
            for key in SOURCE_END_KEYS:
                if train[key] == SOURCE_END:
                    train[key] = source_end_lr(source_train)
        return train

    def target_run_config(self, source: RunConfig) -> RunConfig:
        """The grown model's run config: the source's, with the target's model and the pool's
        training overrides, over `final_steps`; checked to fit in memory with the candidates
        trained together (all of them, or `chunk_size`) and the states of the whole pool."""
        raw = source.to_dict()
        raw["model"].update(self.target)
        raw["train"] = self.resolved_train(raw["train"])
        raw["train"]["steps"] = self.final_steps
        raw["train"]["warmup_steps"] = min(raw["train"]["warmup_steps"], self.final_steps)
        target = run_config_from_dict(raw, where="pool target")
        for spec in self.strategies:
            # the rate is a float32 on the device: beyond its range it overflows to inf there
            if not math.isfinite(target.train.lr * spec.lr_scale) or target.train.lr * spec.lr_scale > FLOAT32_MAX:
                raise LaggrowError(f"pool strategy {spec.label}: lr_scale {spec.lr_scale:g} x train.lr "
                                   f"{target.train.lr:g} is not a finite learning rate (expected a product of at "
                                   f"most {FLOAT32_MAX:.3g}, the largest float32)")
        n = len(self.strategies) * len(self.seeds)
        # auto goes down to one at a time if it must: the device's memory decides when training
        together = 1 if self.chunk_size == AUTO else n if self.chunk_size <= 0 else min(self.chunk_size, n)
        check_training_fits(target, "pool target", candidates=n, together=together)
        return target


def source_end_lr(train: dict[str, Any]) -> float:
    """The learning rate a run's schedule ends at (a train config as a dict): lr x min_lr_ratio
    after a cosine or linear decay, lr when constant."""
    return float(train["lr"]) if train.get("schedule") == "constant" else float(train["lr"]) * train["min_lr_ratio"]


def eval_schedule(lag: int, final: int, points: int) -> list[int]:
    """Log-spaced steps in [1, final] plus 0, lag and final, sorted and unique."""
    spaced = np.unique(np.round(np.geomspace(1, final, max(points, 2))).astype(int))
    return sorted({0, lag, final, *(int(s) for s in spaced)})


def _strategy_spec(entry: Any, where: str) -> StrategySpec:
    if isinstance(entry, str):
        return StrategySpec(name=entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise LaggrowError(f"{where}: expected a strategy name or a mapping with 'name', got {shown(entry)}")
    if not all(isinstance(k, str) for k in entry):
        raise LaggrowError(f"{where}: expected option names as strings, got {shown(list(entry))}")
    options = {k: v for k, v in entry.items() if k not in POOL_ENTRY_KEYS}
    lr_scale = coerce(entry.get("lr_scale", 1.0), float, f"{where}.lr_scale")
    if lr_scale <= 0:
        raise LaggrowError(f"{where}.lr_scale: expected a number > 0, got {lr_scale!r}")
    label = coerce(entry.get("label", ""), str, f"{where}.label")
    return StrategySpec(name=entry["name"], options=options, lr_scale=lr_scale, label=label)


def _labelled(specs: list[StrategySpec]) -> tuple[StrategySpec, ...]:
    """Give every spec a unique label: its name, or name(options) when a name repeats."""
    names = [s.name for s in specs]
    out = []
    for s in specs:
        label = s.label
        if not label:
            extra = [f"{k}={v}" for k, v in sorted(s.options.items())]
            if s.lr_scale != 1.0:
                extra.append(f"lr_scale={s.lr_scale:g}")
            label = f"{s.name}({', '.join(extra)})" if names.count(s.name) > 1 and extra else s.name
        out.append(dataclasses.replace(s, label=label))
    for s in out:
        if LABEL_FORBIDDEN in s.label or not s.label.isprintable():
            raise LaggrowError(f"pool strategies: label {shown(s.label)} holds '|' or a line break or another "
                               "control character (expected a label that can name a row of report.md's tables; "
                               "set 'label' to one)")
    labels = [s.label for s in out]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise LaggrowError(f"pool strategies: {dupes[0]!r} appears twice (expected distinct strategies or labels)")
    return tuple(out)


def pool_config_from_dict(raw: dict[str, Any], where: str = "pool") -> PoolConfig:
    """Build and check a pool: every key, and every value the source does not decide (the
    target's keys and types, the training overrides over the defaults), so that `laggrow run`
    finds a bad pool before it trains the base."""
    if not isinstance(raw, dict):
        raise LaggrowError(f"{where}: expected a mapping of pool keys, got {shown(raw)}")
    raw = dict(raw)
    for key in ("source", "strategies", "lag_steps", "final_steps"):
        if key not in raw:
            raise LaggrowError(f"{where}.{key}: missing (expected it in every pool file)")
    entries = raw.pop("strategies")
    if not isinstance(entries, list) or not entries:
        raise LaggrowError(f"{where}.strategies: expected a non-empty list of strategies")
    specs = _labelled([_strategy_spec(e, f"{where}.strategies[{i}]") for i, e in enumerate(entries)])
    chunk_size = raw.pop("chunk_size", AUTO)  # an integer or "auto": checked in _validate
    mesh = mesh_config_from_dict(raw.pop("mesh", None), f"{where}.mesh")
    pool = build_dataclass(PoolConfig, {**raw, "strategies": ()}, where)
    pool = dataclasses.replace(pool, strategies=specs, seeds=tuple(pool.seeds), eval_at=tuple(pool.eval_at),
                               chunk_size=chunk_size, mesh=mesh)
    if "eval_points" not in raw and 1 <= pool.final_steps:  # the default fits: one evaluation a step at most
        pool = dataclasses.replace(pool, eval_points=min(PoolConfig.eval_points, pool.final_steps + 1))
    _validate(pool, where)
    return pool


def _validate(pool: PoolConfig, where: str) -> None:
    def check(ok: bool, key: str, expected: str, got: Any) -> None:
        require(ok, f"{where}.{key}", expected, got)

    check(1 <= pool.final_steps <= INT32_MAX, "final_steps", "an integer in [1, 2**31 - 1] (an int32 step)",
            pool.final_steps)
    check(1 <= pool.lag_steps <= pool.final_steps, "lag_steps",
            f"an integer in [1, final_steps={pool.final_steps}]", pool.lag_steps)
    check(len(pool.seeds) >= 1 and all(isinstance(s, int) and not isinstance(s, bool) for s in pool.seeds)
            and len(set(pool.seeds)) == len(pool.seeds), "seeds", "a list of distinct integers", list(pool.seeds))
    check(all(0 <= s <= SEED_MAX for s in pool.seeds), "seeds", "seeds in [0, 2**32 - 1] (uint32)",
            list(pool.seeds))
    check(pool.optimizer_state in ("reset", "carry"), "optimizer_state", "'reset' or 'carry'",
            pool.optimizer_state)
    # evaluations at distinct steps: at most one per step of [0, final_steps]
    most = min(pool.final_steps + 1, MAX_EVAL_POINTS)
    check(2 <= pool.eval_points <= most, "eval_points",
            f"an integer in [2, {most}] (at most final_steps + 1 and {MAX_EVAL_POINTS})", pool.eval_points)
    check(pool.probe_lr in ("schedule", "peak"), "probe_lr", "'schedule' or 'peak'", pool.probe_lr)
    if pool.probe_lr == "peak":
        for key in ("warmup_steps", "hold_steps"):
            check(key not in pool.train, f"train.{key}",
                  "no value: probe_lr 'peak' sets warmup_steps 0 and hold_steps lag_steps", pool.train.get(key))
    check(isinstance(pool.test_batches, int) and 1 <= pool.test_batches <= MAX_EVAL_POINTS, "test_batches",
          f"an integer in [1, {MAX_EVAL_POINTS}]", pool.test_batches)
    check(0 <= pool.eval_every <= pool.lag_steps, "eval_every",
          f"an integer in [0, lag_steps={pool.lag_steps}] (0: no dense grid)", pool.eval_every)
    check(all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= pool.final_steps for s in pool.eval_at),
          "eval_at", f"a list of steps in [0, final_steps={pool.final_steps}]", list(pool.eval_at))
    _validate_halving(pool, where)
    check(len(pool.eval_steps()) <= MAX_EVAL_POINTS, "eval_every", f"an evaluation grid of at most "
          f"{MAX_EVAL_POINTS} steps", f"{len(pool.eval_steps())} steps")
    check(pool.chunk_size == AUTO or (isinstance(pool.chunk_size, int) and not isinstance(pool.chunk_size, bool)
                                      and 0 <= pool.chunk_size <= INT32_MAX),
          "chunk_size", f"an integer >= 0 (0: all at once) or '{AUTO}' (what the device's memory holds)",
          pool.chunk_size)
    check(0 <= pool.checkpoint_every <= INT32_MAX, "checkpoint_every", "an integer in [0, 2**31 - 1]",
            pool.checkpoint_every)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"steps"}
    for key in pool.train:
        name = key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else shown(key)
        check(key in known, f"train.{name}", f"a train setting ({', '.join(sorted(known))})", key)
    # The overrides' types and values, over the defaults: the source's own settings are checked
    # with it, and the combination once more when the target is built (`source_end` then too).
    overrides = dict(pool.train)
    for key in SOURCE_END_KEYS:
        if isinstance(overrides.get(key), str):
            check(overrides[key] == SOURCE_END, f"train.{key}",
                  f"a number, or '{SOURCE_END}' (the rate the source's schedule ended at)", overrides[key])
            overrides[key] = getattr(TrainConfig, key) if key == "lr" else 0.0
    warmup = min(overrides.get("warmup_steps", DEFAULT_POST_GROWTH_WARMUP), pool.final_steps) \
        if isinstance(overrides.get("warmup_steps", 0), int) else overrides["warmup_steps"]
    train = build_dataclass(TrainConfig, {**overrides, "steps": pool.final_steps, "warmup_steps": warmup},
                            f"{where}.train")
    try:
        train.validate()
    except LaggrowError as err:
        raise LaggrowError(f"{where}: {err}") from None
    if not all(isinstance(k, str) for k in pool.target):
        raise LaggrowError(f"{where}.target: expected model keys, got {shown(list(pool.target))}")
    build_dataclass(ModelConfig, pool.target, f"{where}.target")  # keys and types; sizes need the source


HALVING_KEYS = ("eta", "first", "predictor")


def _validate_halving(pool: PoolConfig, where: str) -> None:
    """`halving: {eta, first, predictor}`: eta >= 2, first in [1, T], a known predictor."""
    from laggrow.analysis.halving import halving_budgets
    from laggrow.analysis.predictors import get_predictor

    h = pool.halving
    if not h:
        return
    if not isinstance(h, dict) or not all(isinstance(k, str) for k in h):
        raise LaggrowError(f"{where}.halving: expected a mapping with eta, first (and predictor), got {shown(h)}")
    unknown = sorted(set(h) - set(HALVING_KEYS))
    if unknown:
        raise LaggrowError(f"{where}.halving.{unknown[0]}: unknown key (expected {', '.join(HALVING_KEYS)})")
    if "first" not in h:
        raise LaggrowError(f"{where}.halving.first: missing (expected the steps of the first round)")
    h.setdefault("eta", 2)
    h.setdefault("predictor", "loss")
    for key in ("eta", "first"):
        h[key] = coerce(h[key], int, f"{where}.halving.{key}")
    try:
        halving_budgets(len(pool.strategies), h["eta"], h["first"], pool.final_steps)  # validates
    except LaggrowError as err:  # its messages name the key from "halving." on
        raise LaggrowError(f"{where}.{err}") from None
    try:
        get_predictor(coerce(h["predictor"], str, f"{where}.halving.predictor"))
    except LaggrowError as err:
        raise LaggrowError(f"{where}.halving.{err}") from None


def load_pool_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PoolConfig:
    raw = read_yaml(path, what="pool")
    raw.update(overrides or {})
    return pool_config_from_dict(raw, where=f"pool {path}")
