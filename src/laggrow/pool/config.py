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
    optimizer_state: reset         # reset | carry (AdamW moments through the growth)
    train: {lr: 0.002}             # overrides of the source's train config after growth
    eval_points: 16                # log-spaced evaluation steps, 0, k and T always included

Every candidate (strategy x seed) sees the same batches as every other candidate of its seed and
the same learning-rate schedule, so a probe of k steps is exactly the prefix of the final run.
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
    ModelConfig,
    RunConfig,
    TrainConfig,
    build_dataclass,
    coerce,
    read_yaml,
    require,
    run_config_from_dict,
    shown,
)
from laggrow.errors import LaggrowError
from laggrow.resources import INT32_MAX, MAX_EVAL_POINTS, SEED_MAX, check_training_fits

# Options a strategy entry may carry besides the growth's own (noise, block, partner).
POOL_ENTRY_KEYS = ("name", "label", "lr_scale")


@dataclass(frozen=True)
class StrategySpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0  # a learning-rate multiplier for this candidate alone
    label: str = ""  # how records name it; defaults to the name, plus options when ambiguous


@dataclass(frozen=True)
class PoolConfig:
    source: str
    strategies: tuple[StrategySpec, ...]
    lag_steps: int
    final_steps: int
    target: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    optimizer_state: str = "reset"
    train: dict[str, Any] = field(default_factory=dict)
    eval_points: int = 16
    chunk_size: int = 0  # candidates trained together; 0: the whole pool at once
    checkpoint_every: int = 0  # train-final checkpoints; 0: only at the end

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        return eval_schedule(self.lag_steps, self.final_steps, self.eval_points)

    def target_run_config(self, source: RunConfig) -> RunConfig:
        """The grown model's run config: the source's, with the target's model and the pool's
        training overrides, over `final_steps`; checked to fit in memory with the candidates
        trained together (all of them, or `chunk_size`) and the states of the whole pool."""
        raw = source.to_dict()
        raw["model"].update(self.target)
        raw["train"].update(self.train)
        raw["train"]["steps"] = self.final_steps
        raw["train"]["warmup_steps"] = min(raw["train"]["warmup_steps"], self.final_steps)
        target = run_config_from_dict(raw, where="pool target")
        for spec in self.strategies:
            if not math.isfinite(target.train.lr * spec.lr_scale):
                raise LaggrowError(f"pool strategy {spec.label}: lr_scale {spec.lr_scale:g} x train.lr "
                                   f"{target.train.lr:g} is not a finite learning rate")
        n = len(self.strategies) * len(self.seeds)
        together = n if self.chunk_size <= 0 else min(self.chunk_size, n)
        check_training_fits(target, "pool target", candidates=n, together=together)
        return target


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
    pool = build_dataclass(PoolConfig, {**raw, "strategies": ()}, where)
    pool = dataclasses.replace(pool, strategies=specs, seeds=tuple(pool.seeds))
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
    check(0 <= pool.chunk_size <= INT32_MAX, "chunk_size", "an integer >= 0 (0: all at once)", pool.chunk_size)
    check(0 <= pool.checkpoint_every <= INT32_MAX, "checkpoint_every", "an integer in [0, 2**31 - 1]",
            pool.checkpoint_every)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"steps"}
    for key in pool.train:
        name = key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else shown(key)
        check(key in known, f"train.{name}", f"a train setting ({', '.join(sorted(known))})", key)
    # The overrides' types and values, over the defaults: the source's own settings are checked
    # with it, and the combination once more when the target is built.
    overrides = dict(pool.train)
    warmup = min(overrides.get("warmup_steps", TrainConfig.warmup_steps), pool.final_steps) \
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


def load_pool_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PoolConfig:
    raw = read_yaml(path, what="pool")
    raw.update(overrides or {})
    return pool_config_from_dict(raw, where=f"pool {path}")
