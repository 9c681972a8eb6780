"""A stacking config: the run sections (the target model, data, train over the whole budget T) and a
`stack` section; the stage schedule (PROP-alpha), the candidates and the compute of every method,
all by arithmetic. No jax here, so every check runs before anything is loaded or written.

    # configs/stack-demo.yaml
    model: {n_layers: 6, d_model: 128, n_heads: 4, d_ff: 512}   # the target: the last stage's model
    data: {corpus: kjv, seq_len: 128}
    train: {steps: 600, batch_size: 8, lr: 0.002, warmup_steps: 20}  # T and ONE schedule over it
    stack:
      start_layers: 1         # the first stage's depth (a multiple of block)
      block: 1                # layers added per growth; the model splits into blocks of this many
      alpha: 1.0              # PROP-alpha: stage i trains a share of T proportional to i ** alpha
      probe_steps: 16         # K: every candidate of a growth is trained K steps, then the best kept
      candidates: [blocks]    # blocks (duplicate every block p, the copy right after it; the last
                              # block is the top one), top, zero (identity block on top), random
      methods: [adaptive, top, middle, scratch]
      optimizer_state: carry  # AdamW's moments through every growth (copies take their source's)
      predictor: loss         # how a probe is judged (laggrow.analysis.predictors)
      seeds: [0, 1]           # init and data order of each repetition: train.seed + s
      probe_eval_every: 0     # also evaluate the candidates every this many probe steps (0: only at K)

Compute. A training step at depth d costs `d`'s `train_flops_per_token` times the batch's tokens. The
adaptive method pays for its own trajectory (the winner's K probe steps are steps of its stage), for
the other candidates' K probe steps, and for the probe's held-out evaluations after step 0 (forward
passes, a third of a training token's FLOPs; the evaluation right after a growth is the measurement
every method gets and is charged to none). `scratch` trains the target model for the whole steps
that adaptive's total buys, whether or not adaptive is among the methods run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow.config import (
    ModelConfig,
    RunConfig,
    apply_overrides,
    build_dataclass,
    read_yaml,
    require,
    run_config_from_dict,
    shown,
)
from laggrow.errors import LaggrowError
from laggrow.resources import SEED_MAX, check_training_fits

METHODS = ("adaptive", "top", "middle", "scratch")
CANDIDATE_TYPES = ("blocks", "top", "zero", "random")


@dataclass(frozen=True)
class StackConfig:
    start_layers: int = 1
    block: int = 1
    alpha: float = 1.0
    probe_steps: int = 16
    candidates: tuple[str, ...] = ("blocks",)
    methods: tuple[str, ...] = METHODS
    optimizer_state: str = "carry"  # carry | reset
    # the predictor laggrow recommends (docs/study.md): the held-out loss at the end of the probe
    predictor: str = "loss"
    seeds: tuple[int, ...] = (0,)
    probe_eval_every: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Stage:
    stage: int  # 1-based
    depth: int
    start: int  # the global step it begins at
    end: int  # and ends at (exclusive of further steps): its steps are start..end-1

    @property
    def steps(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, int]:
        return {"stage": self.stage, "depth": self.depth, "start": self.start, "end": self.end, "steps": self.steps}


@dataclass(frozen=True)
class Candidate:
    """One way to grow a model of `n` layers by one block: `layers[j]` is the old layer that new
    layer j copies (None: a new layer), `zero_out` marks new layers that are the identity."""

    name: str  # block{p} | zero | random
    kind: str  # copy | zero | random
    layers: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "layers": list(self.layers)}


def block_candidate(n: int, block: int, p: int) -> Candidate:
    """Duplicate block p (layers [p*block, (p+1)*block)) and insert the copy right after it."""
    stop = (p + 1) * block
    layers = list(range(stop)) + list(range(p * block, stop)) + list(range(stop, n))
    return Candidate(f"block{p}", "copy", tuple(layers))


def top_block(n: int, block: int) -> int:
    """Gradual stacking copies the top block on top: duplicating the last block after itself."""
    return n // block - 1


def middle_block(n: int, block: int) -> int:
    """MIDAS's middle block: block ceil(n_blocks / 2) counted from 1, the lower of two middles
    (`growth.depth.middle_block_start` / block, written out here to stay jax-free)."""
    n_blocks = n // block
    return -(-n_blocks // 2) - 1


def candidates_at(n: int, block: int, types: tuple[str, ...]) -> list[Candidate]:
    """The adaptive method's candidates for growing `n` layers by one block, in a fixed order
    (blocks bottom to top, then zero, then random), each distinct: `top` is the last block, so
    with `blocks` it adds nothing."""
    positions: list[int] = []
    if "blocks" in types:
        positions = list(range(n // block))
    elif "top" in types:
        positions = [top_block(n, block)]
    out = [block_candidate(n, block, p) for p in positions]
    if "zero" in types:
        out.append(Candidate("zero", "zero", (*range(n), *([None] * block))))
    if "random" in types:
        out.append(Candidate("random", "random", (*range(n), *([None] * block))))
    return out


def fixed_candidate(method: str, n: int, block: int) -> Candidate:
    """What `top` (gradual stacking) and `middle` (MIDAS) copy when growing `n` layers."""
    p = top_block(n, block) if method == "top" else middle_block(n, block)
    return block_candidate(n, block, p)


def stage_ends(total: int, n_stages: int, alpha: float) -> list[int]:
    """PROP-alpha: stage i (from 1) gets total * i**alpha / sum_j j**alpha steps. Rounded on the
    cumulative shares, so the lengths sum to `total` exactly and each is within one step of its
    share."""
    weights = [i**alpha for i in range(1, n_stages + 1)]
    cumulative, ends = 0.0, []
    for w in weights:
        cumulative += w
        ends.append(math.floor(total * cumulative / sum(weights) + 0.5))
    ends[-1] = total
    return ends


@dataclass(frozen=True)
class StackPlan:
    """A validated stacking config and everything that follows from it by arithmetic."""

    run: RunConfig  # the target model; train.steps = T
    stack: StackConfig
    stages: tuple[Stage, ...]

    @property
    def final_steps(self) -> int:
        return self.run.train.steps

    def model_at(self, depth: int) -> ModelConfig:
        return dataclasses.replace(self.run.model, n_layers=depth)

    def candidates(self, stage: Stage) -> list[Candidate]:
        """The adaptive method's candidates at the growth that starts `stage` (stage >= 2)."""
        return candidates_at(stage.depth - self.stack.block, self.stack.block, self.stack.candidates)

    # ---- compute, by arithmetic ---------------------------------------------------------------

    @property
    def tokens_per_step(self) -> int:
        return self.run.train.batch_size * self.run.data.seq_len

    def step_flops(self, depth: int) -> int:
        return self.model_at(depth).train_flops_per_token(self.run.data.seq_len) * self.tokens_per_step

    def eval_flops(self, depth: int) -> int:
        """One held-out evaluation of one model: forward passes, a third of training's FLOPs."""
        d = self.run.data
        tokens = d.eval_batches * d.eval_batch_size * d.seq_len
        return self.model_at(depth).train_flops_per_token(d.seq_len) // 3 * tokens

    def probe_eval_steps(self) -> list[int]:
        """The probe's evaluations, in steps since the growth: 0, every `probe_eval_every`, K."""
        k, every = self.stack.probe_steps, self.stack.probe_eval_every
        return sorted({0, k, *(range(every, k, every) if every > 0 else ())})

    def probe_charge(self, stage: Stage) -> dict[str, int]:
        """What the probe at the start of `stage` adds to the adaptive method beyond its own steps:
        the other candidates' K steps and every candidate's evaluations after step 0. A growth
        with one candidate is not probed and costs nothing."""
        n = len(self.candidates(stage))
        if n < 2:
            return {"probe_flops": 0, "eval_flops": 0, "probe_tokens": 0}
        k = self.stack.probe_steps
        evals = len([s for s in self.probe_eval_steps() if s > 0])
        return {"probe_flops": (n - 1) * k * self.step_flops(stage.depth),
                "eval_flops": n * evals * self.eval_flops(stage.depth),
                "probe_tokens": (n - 1) * k * self.tokens_per_step}

    def compute(self, method: str) -> dict[str, int]:
        """The compute a method is charged over the whole run (what its records must add up to)."""
        if method == "scratch":
            steps = self.scratch_steps()
            out = {"train_flops": steps * self.step_flops(self.run.model.n_layers), "probe_flops": 0,
                   "eval_flops": 0, "train_tokens": steps * self.tokens_per_step, "probe_tokens": 0}
        else:
            out = {"train_flops": sum(s.steps * self.step_flops(s.depth) for s in self.stages),
                   "probe_flops": 0, "eval_flops": 0,
                   "train_tokens": self.final_steps * self.tokens_per_step, "probe_tokens": 0}
            if method == "adaptive":
                for stage in self.stages[1:]:
                    for key, value in self.probe_charge(stage).items():
                        out[key] += value
        out["total_flops"] = out["train_flops"] + out["probe_flops"] + out["eval_flops"]
        out["total_tokens"] = out["train_tokens"] + out["probe_tokens"]
        return out

    def scratch_steps(self) -> int:
        """The target model's steps that the adaptive method's total FLOPs buy (rounded down: the
        remainder is less than one step)."""
        return self.compute("adaptive")["total_flops"] // self.step_flops(self.run.model.n_layers)

    def scratch_run(self) -> RunConfig:
        """scratch's run config: the target model over its own budget, one schedule over it."""
        steps = self.scratch_steps()
        train = dataclasses.replace(self.run.train, steps=steps, warmup_steps=min(self.run.train.warmup_steps, steps),
                                    hold_steps=0)
        return dataclasses.replace(self.run, train=train)

    def run_for(self, method: str, seed: int, depth: int | None = None) -> RunConfig:
        """The run config of one method's final model, as its run directory records it: its own
        train.seed (the stream it read) and step budget."""
        run = self.scratch_run() if method == "scratch" else self.run
        model = run.model if depth is None else dataclasses.replace(run.model, n_layers=depth)
        return dataclasses.replace(run, model=model,
                                   train=dataclasses.replace(run.train, seed=self.run.train.seed + seed))

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run.to_dict(), "stack": self.stack.to_dict()}


# ---- building and checking ------------------------------------------------------------------------

def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    require(ok, f"stack.{key}", expected, got)


def _distinct(values: tuple, allowed: tuple[str, ...], key: str) -> None:
    listed = ", ".join(allowed)
    _check(len(values) >= 1, key, f"a non-empty list of {listed}", list(values))
    for v in values:
        _check(isinstance(v, str) and v in allowed, key, f"names from {listed}", v)
    _check(len(set(values)) == len(values), key, "each name once", list(values))


def stack_config_from_dict(raw: Any) -> StackConfig:
    if raw is None:
        raw = {}
    cfg = build_dataclass(StackConfig, raw, "stack")
    cfg = dataclasses.replace(cfg, candidates=tuple(cfg.candidates), methods=tuple(cfg.methods),
                              seeds=tuple(cfg.seeds))
    for name in ("start_layers", "block"):
        _check(getattr(cfg, name) >= 1, name, "an integer >= 1", getattr(cfg, name))
    _check(cfg.start_layers % cfg.block == 0, "start_layers",
           f"a positive multiple of stack.block ({cfg.block}), so that the model splits into whole blocks",
           cfg.start_layers)
    _check(math.isfinite(cfg.alpha) and cfg.alpha > 0, "alpha", "a number > 0 (PROP-alpha)", cfg.alpha)
    _check(cfg.probe_steps >= 1, "probe_steps", "an integer >= 1", cfg.probe_steps)
    _distinct(cfg.candidates, CANDIDATE_TYPES, "candidates")
    _distinct(cfg.methods, METHODS, "methods")
    _check(cfg.optimizer_state in ("carry", "reset"), "optimizer_state", "'carry' or 'reset'", cfg.optimizer_state)
    _check(len(cfg.seeds) >= 1 and len(set(cfg.seeds)) == len(cfg.seeds)
           and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in cfg.seeds),
           "seeds", "a list of distinct integers in [0, 2**32 - 1]", list(cfg.seeds))
    _check(0 <= cfg.probe_eval_every <= cfg.probe_steps, "probe_eval_every",
           f"an integer in [0, probe_steps={cfg.probe_steps}] (0: evaluate at the end of the probe only)",
           cfg.probe_eval_every)
    from laggrow.analysis.predictors import get_predictor

    try:
        get_predictor(cfg.predictor)
    except LaggrowError as err:
        raise LaggrowError(f"stack.{err}") from None
    return cfg


def plan_from_dict(raw: dict[str, Any], where: str = "stack config") -> StackPlan:
    """Check every key and what follows from them together: the target depth is reachable in
    blocks, every stage gets a step, K fits in every stage that starts with a probe, the adaptive
    method has a choice to make, and the largest probe fits in memory."""
    if not isinstance(raw, dict):
        raise LaggrowError(f"{where}: expected a mapping of sections (model, data, train, stack), got {shown(raw)}")
    raw = dict(raw)
    stack = stack_config_from_dict(raw.pop("stack", None))
    run = run_config_from_dict(raw, where=where)
    target, start, block = run.model.n_layers, stack.start_layers, stack.block
    require(target > start and (target - start) % block == 0, "model.n_layers",
            f"stack.start_layers ({start}) plus a positive multiple of stack.block ({block})", target)
    n_stages = (target - start) // block + 1
    ends = stage_ends(run.train.steps, n_stages, stack.alpha)
    starts = [0, *ends[:-1]]
    stages = tuple(Stage(i + 1, start + i * block, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True)))
    short = min(stages, key=lambda s: s.steps)
    require(short.steps >= 1, "train.steps",
            f"a budget that gives each of the {n_stages} stages at least one step under PROP-{stack.alpha:g} "
            f"(stage {short.stage} gets 0 of {run.train.steps})", run.train.steps)
    plan = StackPlan(run=run, stack=stack, stages=stages)
    probed = [s for s in stages[1:] if len(plan.candidates(s)) >= 2]
    if "adaptive" in stack.methods:
        _check(bool(probed), "candidates", "at least two distinct candidates at some growth (with one, adaptive "
               "is top stacking)", list(stack.candidates))
    if probed and "adaptive" in stack.methods:
        shortest = min(probed, key=lambda s: s.steps)
        _check(stack.probe_steps <= shortest.steps, "probe_steps",
               f"at most the shortest stage that starts with a probe (stage {shortest.stage}: {shortest.steps} steps)",
               stack.probe_steps)
    if "scratch" in stack.methods:
        require(plan.scratch_steps() >= 1, "train.steps", "a budget that buys scratch at least one step",
                run.train.steps)
    for s in stack.seeds:
        require(run.train.seed + s <= SEED_MAX, "stack.seeds", "train.seed + seed <= 2**32 - 1 (a uint32)",
                run.train.seed + s)
    widest = max((len(plan.candidates(s)) for s in stages[1:]), default=1)
    check_training_fits(run, f"{where} (its largest probe)", candidates=widest, together=widest)
    return plan


def load_stack_plan(path: str | Path, overrides: list[str] | None = None) -> StackPlan:
    """Read, override (`--set stack.probe_steps=8`) and check a stacking config."""
    raw = apply_overrides(read_yaml(path, what="stack config"), overrides)
    return plan_from_dict(raw, where=f"stack config {path}")


def plan_with_vocab(plan: StackPlan, vocab_size: int) -> StackPlan:
    """The same plan with the tokenizer's vocabulary (checked again: memory depends on it)."""
    raw = plan.to_dict()
    raw["run"]["model"]["vocab_size"] = vocab_size
    return plan_from_dict({**raw["run"], "stack": raw["stack"]})

