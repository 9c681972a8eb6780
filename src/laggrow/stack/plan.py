"""A stacking config: the run sections (the target model, data, train over adaptive's budget T) and a
`stack` section; the stage schedule (PROP-alpha), the candidates and the compute of every method,
all by arithmetic. No jax here, so every check runs before anything is loaded or written.

    # configs/stack-demo.yaml
    model: {n_layers: 6, d_model: 128, n_heads: 4, d_ff: 512}   # the target: the last stage's model
    data: {corpus: kjv, seq_len: 128}
    train: {steps: 600, batch_size: 8, lr: 0.002, warmup_steps: 20}  # T: adaptive's steps, ONE schedule
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
      probe_eval_every: 0     # also evaluate the candidates every this many probe steps (0: at 0 and K only)
      source: null            # or a laggrow run to start from (relative to the working dir): below

A source (`stack.source: runs/small`, or an imported model: `laggrow import HF_DIR --out RUN`). The
source is already trained, so there is no training from scratch: stage 1 is the source itself, of
its own depth (which replaces start_layers; a start_layers that disagrees is refused), trained 0
steps here, and the first growth happens at step 0 from the source's final parameters. The
PROP-alpha stages cover the growths from the source's depth to the target over T: stage i + 1 (the
i-th growth) trains T * i**alpha / sum_j j**alpha steps. adaptive, top and middle all start from
the source; `scratch` stays a random target-depth model trained to the same FLOPs (it answers "is
growing this checkpoint worth it at this compute"). The source's own training is sunk: charged to
no method, and recorded in stack.json (`source`). The target must be the source's model but for
n_layers (keys the config leaves out are the source's; how it is computed, dtype, attention,
scan_layers and loss_chunk, may differ), and the data is tokenized by the source's tokenizer
(data.tokenizer, left out, is the source's). The source's depth must be a multiple of block and
below the target's. With `optimizer_state: carry`, the source's AdamW moments are carried when it
has them (a laggrow-trained run) and fresh ones start when it has none (an import). Every method of
a seed reads the stream seeded `train.seed + s` from the position the source stopped at, as a pool
does.

Compute. A training step at depth d costs `d`'s `train_flops_per_token` times the batch's tokens. The
adaptive method pays for its own trajectory (the winner's K probe steps are steps of its stage), for
the other candidates' K probe steps, and for every evaluation its probe makes to choose: every
candidate on the selection set's windows at every probe evaluation, the one right after the growth
included (forward passes, a third of a training token's FLOPs).

Equal compute. Every method is trained to the same FLOPs budget: adaptive's total when adaptive is
among the methods, else the stacking schedule's training over T. `adaptive` trains T steps; `top`
and `middle` the largest T' >= T whose own PROP-alpha stages (one schedule over T') fit the budget;
`scratch` the largest number of target-depth steps that fits it. Each is within one target-depth
step of the budget and never above it.

Measurement. The test set's evaluations (every curves.jsonl row, every final loss) are what each
method is judged by, made at the same points for every method (and after adaptive's probes); they
choose nothing and are charged to no method.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow.config import ModelConfig, RunConfig, TrainConfig, run_config_from_dict
from laggrow.config_engine import apply_overrides, build_dataclass, read_yaml, require, shown
from laggrow.errors import LaggrowError
from laggrow.resources import SEED_MAX, check_training_fits

METHODS = ("adaptive", "top", "middle", "scratch")
CANDIDATE_TYPES = ("blocks", "top", "zero", "random")


@dataclass(frozen=True)
class StackConfig:
    start_layers: int = 1  # the first stage's depth, a multiple of block (with a source: the source's)
    block: int = 1  # layers added per growth; the model splits into blocks of this many
    alpha: float = 1.0  # PROP-alpha: stage i trains a share of train.steps proportional to i ** alpha
    probe_steps: int = 16  # K: adaptive trains every candidate of a growth K steps, then keeps the best
    candidates: tuple[str, ...] = ("blocks",)  # blocks (every block duplicated after itself) | top | zero | random
    methods: tuple[str, ...] = METHODS  # adaptive | top | middle | scratch, each at adaptive's FLOPs
    optimizer_state: str = "carry"  # carry (AdamW's moments through every growth) | reset (fresh at each)
    # the predictor laggrow recommends (docs/study.md): the held-out loss at the end of the probe
    predictor: str = "loss"  # how a probe is judged: loss | window | slope | extrapolate
    seeds: tuple[int, ...] = (0,)  # repetitions: the init and data order of each is train.seed + s
    probe_eval_every: int = 0  # also evaluate the candidates every this many probe steps (0: at 0 and K only)
    source: str | None = None  # a run (trained, grown or imported) the first stage is, its depth start_layers

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
    weights = [i**alpha for i in range(1, n_stages + 1)]  # OverflowError beyond the largest float
    if not math.isfinite(sum(weights)):  # each finite, their sum not
        raise OverflowError(f"PROP-{alpha:g} weights of {n_stages} stages add up beyond the largest float")
    cumulative, ends = 0.0, []
    for w in weights:
        cumulative += w
        ends.append(math.floor(total * cumulative / sum(weights) + 0.5))
    ends[-1] = total
    return ends


def stages_over(total: int, start_layers: int, target: int, block: int, alpha: float,
                from_source: bool = False) -> tuple[Stage, ...]:
    """The stages from `start_layers` to `target` in blocks of `block` over `total` steps
    (PROP-alpha). `from_source`: stage 1 is a trained source of `start_layers` layers, given no
    step, and PROP-alpha splits `total` over the growth stages alone (the first growth is stage 2,
    weighted 1**alpha, at step 0)."""
    first = 1 if from_source else 0  # the stages that PROP-alpha splits `total` over start here
    n_stages = (target - start_layers) // block + 1
    ends = [0] * first + stage_ends(total, n_stages - first, alpha)
    starts = [0, *ends[:-1]]
    return tuple(Stage(i + 1, start_layers + i * block, s, e)
                 for i, (s, e) in enumerate(zip(starts, ends, strict=True)))


@dataclass(frozen=True)
class StackPlan:
    """A validated stacking config and everything that follows from it by arithmetic."""

    run: RunConfig  # the target model; train.steps = T
    stack: StackConfig
    stages: tuple[Stage, ...]  # over T: adaptive's (and, without adaptive, every stacking method's)

    @property
    def final_steps(self) -> int:
        return self.run.train.steps

    @property
    def from_source(self) -> bool:
        """Whether the first stage is a trained source (`stack.source`), given no step here."""
        return self.stack.source is not None

    def trained_stages(self, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
        """The stages that train (all but a source's)."""
        return stages[1:] if self.from_source and stages[0].steps == 0 else stages

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
        return self.model_at(depth).train_step_compute(self.run.train.batch_size, self.run.data.seq_len)[1]

    def eval_flops(self, depth: int) -> int:
        """One evaluation of one model on the selection set's windows (`data.eval_batches` x
        `data.eval_batch_size` of them): forward passes, a third of training's FLOPs."""
        d = self.run.data
        tokens = d.eval_batches * d.eval_batch_size * d.seq_len
        return self.model_at(depth).train_flops_per_token(d.seq_len) // 3 * tokens

    def probe_eval_steps(self) -> list[int]:
        """The probe's evaluations, in steps since the growth: 0, every `probe_eval_every`, K."""
        k, every = self.stack.probe_steps, self.stack.probe_eval_every
        return sorted({0, k, *(range(every, k, every) if every > 0 else ())})

    def probe_charge(self, stage: Stage) -> dict[str, int]:
        """What the probe at the start of `stage` adds to the adaptive method beyond its own steps:
        the other candidates' K steps and every candidate's selection-set evaluations, the one
        right after the growth included (every evaluation the choice reads). A growth with one
        candidate is not probed and costs nothing."""
        n = len(self.candidates(stage))
        if n < 2:
            return {"probe_flops": 0, "eval_flops": 0, "probe_tokens": 0}
        k = self.stack.probe_steps
        evals = len(self.probe_eval_steps())
        return {"probe_flops": (n - 1) * k * self.step_flops(stage.depth),
                "eval_flops": n * evals * self.eval_flops(stage.depth),
                "probe_tokens": (n - 1) * k * self.tokens_per_step}

    def stages_over(self, total: int) -> tuple[Stage, ...]:
        """The stacking schedule (PROP-alpha stages from start_layers to the target) over `total` steps."""
        return stages_over(total, self.stack.start_layers, self.run.model.n_layers, self.stack.block,
                           self.stack.alpha, self.from_source)

    def schedule_flops(self, total: int) -> int:
        """The training FLOPs of the stacking schedule over `total` steps."""
        return sum(s.steps * self.step_flops(s.depth) for s in self.stages_over(total))

    def budget_flops(self) -> int:
        """The FLOPs every method is trained to: adaptive's total (its training, the other
        candidates' probe steps, the probe's selection-set evaluations) when adaptive is among
        the methods, else the stacking schedule's training over T."""
        if "adaptive" in self.stack.methods:
            return self.compute("adaptive")["total_flops"]
        return self.schedule_flops(self.final_steps)

    def stacked_steps(self) -> int:
        """T' of `top` and `middle`: the largest budget >= T whose stacking schedule's FLOPs do not
        exceed `budget_flops()`. The schedule's FLOPs rise with every step by at least a first-stage
        step and at most a target-depth step, so what is left is less than one target-depth step
        (and without adaptive, T' = T)."""
        budget = self.budget_flops()
        low = self.final_steps  # fits: the budget is at least the schedule's over T
        high = budget // self.step_flops(self.stack.start_layers) + 1  # every step costs a first-stage step
        while high - low > 1:  # schedule_flops(low) <= budget < schedule_flops(high)
            middle = (low + high) // 2
            low, high = (middle, high) if self.schedule_flops(middle) <= budget else (low, middle)
        return low

    def scratch_steps(self) -> int:
        """The target model's steps that `budget_flops()` buys (rounded down: the remainder is
        less than one step)."""
        return self.budget_flops() // self.step_flops(self.run.model.n_layers)

    def method_steps(self, method: str) -> int:
        """The steps `method` trains for: T for adaptive, T' for top and middle, scratch's own."""
        if method == "scratch":
            return self.scratch_steps()
        return self.final_steps if method == "adaptive" else self.stacked_steps()

    def stages_for(self, method: str) -> tuple[Stage, ...]:
        """A method's stages: scratch one stage at the target depth, the others the stacking
        schedule over their own steps."""
        steps = self.method_steps(method)
        if method == "scratch":
            return (Stage(1, self.run.model.n_layers, 0, steps),)
        return self.stages if steps == self.final_steps else self.stages_over(steps)

    def compute(self, method: str) -> dict[str, int]:
        """The compute a method is charged over the whole run (what its records must add up to)."""
        stages = self.stages if method == "adaptive" else self.stages_for(method)
        steps = stages[-1].end
        out = {"train_flops": sum(s.steps * self.step_flops(s.depth) for s in stages), "probe_flops": 0,
               "eval_flops": 0, "train_tokens": steps * self.tokens_per_step, "probe_tokens": 0}
        if method == "adaptive":
            for stage in self.stages[1:]:
                for key, value in self.probe_charge(stage).items():
                    out[key] += value
        out["total_flops"] = out["train_flops"] + out["probe_flops"] + out["eval_flops"]
        out["total_tokens"] = out["train_tokens"] + out["probe_tokens"]
        return out

    def budgets(self) -> dict[str, dict[str, int]]:
        """stack.json's `budgets`: every method's steps and total FLOPs, and the budget itself."""
        return {m: {"steps": self.method_steps(m), "flops": self.compute(m)["total_flops"]}
                for m in self.stack.methods}

    def train_for(self, method: str) -> TrainConfig:
        """A method's train section: its own step budget, one schedule over it (the config's seed)."""
        steps, train = self.method_steps(method), self.run.train
        if steps == train.steps:
            return train
        # scratch may train fewer steps than T, so its schedule holds no plateau
        hold = 0 if method == "scratch" else train.hold_steps
        return dataclasses.replace(train, steps=steps, warmup_steps=min(train.warmup_steps, steps), hold_steps=hold)

    def run_for(self, method: str, seed: int, depth: int | None = None) -> RunConfig:
        """The run config of one method's final model, as its run directory records it: its own
        train.seed (the stream it read) and step budget."""
        train = self.train_for(method)
        model = self.run.model if depth is None else dataclasses.replace(self.run.model, n_layers=depth)
        return dataclasses.replace(self.run, model=model,
                                   train=dataclasses.replace(train, seed=self.run.train.seed + seed))

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
    _check(cfg.source is not None or cfg.start_layers % cfg.block == 0, "start_layers",  # a source's: its own check
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
    stack_raw = raw.pop("stack", None)
    stack = stack_config_from_dict(stack_raw)
    if stack.source is not None:
        raw, stack = _from_source(raw, stack, "start_layers" in (stack_raw or {}))
    if "mesh" in raw:  # a run config's section, which laggrow stack would otherwise ignore
        raise LaggrowError(f"{where}: mesh: laggrow stack runs on one device (expected no mesh section and no "
                           "--set mesh.KEY; laggrow train, probe and train-final spread over devices)")
    run = run_config_from_dict(raw, where=where)
    target, start, block = run.model.n_layers, stack.start_layers, stack.block
    first = f"the source's depth, {start} layers," if stack.source is not None else f"stack.start_layers ({start})"
    require(target > start and (target - start) % block == 0, "model.n_layers",
            f"{first} plus a positive multiple of stack.block ({block})", target)
    n_stages = (target - start) // block + (0 if stack.source is not None else 1)  # the stages that train
    try:
        stages = stages_over(run.train.steps, start, target, block, stack.alpha, stack.source is not None)
    except OverflowError:  # i ** alpha beyond the largest float
        raise LaggrowError(f"stack.alpha: expected a number > 0 whose stage weights i ** alpha (i = 1..{n_stages}, "
                           f"PROP-alpha) add up to a finite float, got {shown(stack.alpha)}") from None
    plan = StackPlan(run=run, stack=stack, stages=stages)
    short = min(plan.trained_stages(stages), key=lambda s: s.steps)
    require(short.steps >= 1, "train.steps",
            f"a budget that gives each of the {n_stages} stages at least one step under PROP-{stack.alpha:g} "
            f"(stage {short.stage} gets 0 of {run.train.steps})", run.train.steps)
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
    for method in ("top", "middle"):
        if method in stack.methods:
            # T' >= T; a stage of it with no step could only come of PROP-alpha's rounding
            short = min(plan.trained_stages(plan.stages_for(method)), key=lambda s: s.steps)
            require(short.steps >= 1, "train.steps", f"a budget that gives each of {method}'s stages at least one "
                    f"step over its {plan.method_steps(method)} (stage {short.stage} gets 0)", run.train.steps)
    for s in stack.seeds:
        require(run.train.seed + s <= SEED_MAX, "stack.seeds", "train.seed + seed <= 2**32 - 1 (a uint32)",
                run.train.seed + s)
    widest = max((len(plan.candidates(s)) for s in stages[1:]), default=1)
    check_training_fits(run, f"{where} (its largest probe)", candidates=widest, together=widest)
    return plan


# How a model is computed, not what it is: a target may compute its source's model otherwise.
COMPUTED_ONLY = ("dtype", *ModelConfig.COMPUTE_KEYS)


def read_source(source: str) -> RunConfig:
    """The run config of `stack.source`: a whole model (a finished laggrow run, or one made by
    `laggrow grow` or `laggrow import`), as a pool's source is; one line otherwise."""
    from laggrow import run_dir

    path = Path(source)
    cfg = run_dir.read_run_config(path, what="stack.source")
    run_dir.require_finished(path, what="stack.source")
    return cfg


def _from_source(raw: dict[str, Any], stack: StackConfig, sets_start: bool) -> tuple[dict[str, Any], StackConfig]:
    """The config's sections completed by its source's: the model's keys and the tokenizer the
    config leaves out are the source's, and those it sets must agree with the source (but for
    n_layers and how the model is computed); start_layers is the source's depth."""
    source = read_source(stack.source)
    src_model, src_data = source.model, source.data
    where = f"stack.source {stack.source}"
    if sets_start and stack.start_layers != src_model.n_layers:
        raise LaggrowError(f"stack.start_layers: expected the source's depth {src_model.n_layers} or no "
                           f"start_layers ({where} has {src_model.n_layers} layers), got {stack.start_layers}")
    model_raw = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    model = build_dataclass(ModelConfig, {**src_model.to_dict(), "n_layers": src_model.n_layers, **model_raw},
                            "model")
    for field in dataclasses.fields(ModelConfig):
        name = field.name
        if name == "n_layers" or name in COMPUTED_ONLY:
            continue
        if getattr(model, name) != getattr(src_model, name):
            raise LaggrowError(f"model.{name}: expected the source's {shown(getattr(src_model, name))} ({where}: "
                               f"the target is the source's model but for n_layers), got {shown(getattr(model, name))}")
    data_raw = dict(raw.get("data") or {}) if isinstance(raw.get("data"), dict) else {}
    keys = ("tokenizer", "bpe_vocab_size") if src_data.tokenizer == "bpe" else ("tokenizer",)
    for key in keys:
        mine = data_raw.setdefault(key, getattr(src_data, key))
        if mine != getattr(src_data, key):
            raise LaggrowError(f"data.{key}: expected the source's {shown(getattr(src_data, key))} ({where}'s "
                               f"model reads its own tokens), got {shown(mine)}")
    completed = {**raw, "model": {**src_model.to_dict(), **model_raw}, "data": data_raw}
    if src_model.n_layers % stack.block:
        raise LaggrowError(f"{where}: its {src_model.n_layers} layers are not a multiple of stack.block "
                           f"({stack.block}; expected whole blocks)")
    return completed, dataclasses.replace(stack, start_layers=src_model.n_layers)


def load_stack_plan(path: str | Path, overrides: list[str] | None = None) -> StackPlan:
    """Read, override (`--set stack.probe_steps=8`) and check a stacking config."""
    raw = apply_overrides(read_yaml(path, what="stack config"), overrides)
    return plan_from_dict(raw, where=f"stack config {path}")


def plan_with_vocab(plan: StackPlan, vocab_size: int) -> StackPlan:
    """The same plan with the tokenizer's vocabulary (checked again: memory depends on it). A
    source's model keeps its own (an imported model may pad it beyond its tokenizer's)."""
    if plan.from_source:
        return plan
    raw = plan.to_dict()
    raw["run"]["model"]["vocab_size"] = vocab_size
    return plan_from_dict({**raw["run"], "stack": raw["stack"]})

