"""One method of one seed of a stacking run: its stages, checkpointed one by one, and its final model.

    OUT/stages/<method>-seed<s>/checkpoints/<step>   the state after each completed stage (the last two)
    OUT/stages/<method>-seed<s>/choices.jsonl         one record per growth done (stack.json's choices)
    OUT/curves.jsonl                                  every method's evaluations (rows tagged method, seed)
    OUT/models/<method>-seed<s>/                      the final model as a laggrow run, once finished

Stage i trains the model of depth d_i from the global step its stage starts at to the step it ends
at, on batch i of the stream seeded `train.seed + s` at global step i (every method of a seed reads
the same batches in the same order), under the one learning-rate schedule of the method's whole
budget (T for adaptive, T' for top and middle, scratch's own: see stack/plan.py). A growth starts
each stage after the first: `top` and `middle` apply their fixed candidate, `adaptive` probes every
candidate K steps on the selection set (stack/growth_choice.py) and continues the winner, whose probe steps
are the first K steps of its stage.

Every curve row and final loss is the test set's (`test_loss`, `test_loss_se` over its windows),
never read by a choice: adaptive's growth row is the winner's grown state, evaluated on the test
set once the probe has chosen it.

From a source (`stack.source`): stage 1 is the source itself, trained 0 steps; adaptive, top and
middle start from its final parameters (and its AdamW moments under `optimizer_state: carry` when
it has them, fresh ones when it has none), scratch from a random target-depth model. Every method
reads the stream from the position the source stopped at (batch `start + i` at global step i).

Resuming: the newest intact stage checkpoint is restored (its manifest carries the stage, the compute
charged so far and the seconds spent), and the records of later stages, written by the interrupted
process, are dropped, so a resumed run ends with exactly the records of an uninterrupted one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from laggrow import formats, interrupt, model, run_dir, store, train
from laggrow.analysis.predictors import get_predictor
from laggrow.checkpoint import CheckpointDamaged, Checkpointer, warn
from laggrow.data import BPETokenizer, Dataset, data_fingerprint
from laggrow.errors import LaggrowError
from laggrow.stack import growth_choice
from laggrow.stack.plan import StackPlan, Stage, fixed_candidate, middle_block, top_block

OnEvent = Callable[[str], None]

COMPUTE_KEYS = ("train_flops", "probe_flops", "eval_flops", "train_tokens", "probe_tokens")


def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def abstract_state(plan: StackPlan, train_cfg, depth: int) -> dict:
    """The shapes of a train state of depth `depth`: the target of a stage checkpoint's restore."""
    optimizer = train.make_optimizer(train_cfg)
    shapes = model.param_shapes(plan.model_at(depth))
    return jax.eval_shape(lambda p: train.init_state(p, optimizer), shapes)


class SourceModel:
    """`stack.source` loaded once (on first use) for every method and seed of a stacking run."""

    def __init__(self, plan: StackPlan):
        self.path = Path(plan.stack.source)
        self._loaded: run_dir.LoadedRun | None = None

    @property
    def run(self) -> run_dir.LoadedRun:
        if self._loaded is None:
            self._loaded = run_dir.load_run(self.path, what="stack.source")
        return self._loaded

    @property
    def data_position(self) -> int:
        return int(self.run.data_position)

    def state(self, train_cfg, optimizer_state: str) -> dict:
        """The first stage's train state at step 0: the source's parameters and (carried) its AdamW
        moments with the schedule restarted (an import's are the fresh ones), or fresh moments."""
        params = self.run.params
        fresh = train.make_optimizer(train_cfg).init(params)
        opt_state = fresh
        if optimizer_state == "carry":
            opt_state = train.restart_schedule(self.run.state["opt_state"])
            if jax.tree.structure(opt_state) != jax.tree.structure(fresh):
                raise LaggrowError(f"stack.optimizer_state: 'carry' needs the source's optimizer ({self.path} was "
                                   "trained with another train.grad_clip); expected the source's train.grad_clip, "
                                   "or optimizer_state: reset")
        state = {"params": params, "opt_state": opt_state, "step": jax.numpy.zeros((), jax.numpy.int32)}
        # a copy of its own: training donates its state, and the source serves every method and seed
        return jax.device_put(jax.tree.map(lambda x: jax.numpy.array(x, copy=True), state), jax.devices()[0])


@dataclass
class Progress:
    """Where a method's run stands: the last completed stage and what it has cost so far."""

    stage: int  # 0: nothing done yet
    compute: dict[str, int]
    seconds: float

    @property
    def flops(self) -> float:
        return float(self.compute["train_flops"] + self.compute["probe_flops"] + self.compute["eval_flops"])

    @property
    def tokens(self) -> int:
        return self.compute["train_tokens"] + self.compute["probe_tokens"]


class MethodRun:
    """Runs (or resumes, or reads back) one method of one seed inside a stacking directory."""

    def __init__(self, plan: StackPlan, method: str, seed: int, data: Dataset, out: Path,
                 eval_sets: dict[str, np.ndarray], on_event: OnEvent | None = None,
                 source: SourceModel | None = None):
        """`eval_sets`: the held-out windows by name, "selection" (what adaptive's probe chooses
        on) and "test" (every loss recorded), as `stack.driver.evaluation_sets` makes them. `source`:
        the plan's `stack.source`, loaded (once, when first needed)."""
        self.plan, self.method, self.seed, self.data, self.out = plan, method, seed, data, Path(out)
        self.name = run_name(method, seed)
        self.state_dir = self.out / store.STAGES_DIR / self.name
        self.model_dir = self.out / store.MODELS_DIR / self.name
        self.curves = self.out / store.CURVES_FILE
        self.choices_file = self.state_dir / store.CHOICES_FILE
        self.on_event = on_event or (lambda _line: None)
        self.init_seed = plan.run.train.seed + seed  # model init and data stream of this repetition
        self.stages = plan.stages_for(method)
        self.train_cfg = plan.train_for(method)
        self.selection, self.test = eval_sets["selection"], eval_sets["test"]
        self.fingerprint = {"stack": plan.to_dict(), "method": method, "seed": seed}
        self.source = source
        if plan.from_source and source is None:
            raise ValueError("a plan with stack.source needs its SourceModel")  # a caller's bug

    @property
    def data_start(self) -> int:
        """The stream position of global step 0: where the source stopped (0 without one)."""
        return self.source.data_position if self.source is not None else 0

    # ---- records ----------------------------------------------------------------------------------

    def finished(self) -> bool:
        return (self.model_dir / store.SUMMARY_FILE).is_file()

    def expected_rows(self) -> set[tuple[int, str]]:
        """The (step, point) rows every finished run of this method has in curves.jsonl: the init,
        each growth and (adaptive, where it chose among several) its probe, and each stage's end
        (point "stage end": a train row, or the probe's when the probe is the whole stage)."""
        rows = {(0, "init")}
        for stage in self.stages:
            if stage.stage > 1:
                rows.add((stage.start, "growth"))
                if self.method == "adaptive" and len(self.plan.candidates(stage)) > 1:
                    rows.add((stage.start + self.plan.stack.probe_steps, "probe"))
            if stage.steps:  # a source's stage trains nothing: its init row is all
                rows.add((stage.end, "stage end"))
        return rows

    def check_finished_records(self) -> None:
        """A finished run's records are read back, not made again: they must all be there (its
        choice at every growth, its rows in curves.jsonl), or stack.json would silently lack them."""
        again = (f"expected the records laggrow stack wrote for it; remove {self.model_dir} to run it again, "
                 "or choose another --out")
        growths = [s.stage for s in self.stages if s.stage > 1]
        if growths:
            if not self.choices_file.is_file():
                raise LaggrowError(f"{self.choices_file}: missing, though {self.name} has finished ({again})")
            recorded = [c.get("stage") for c in store.read_jsonl(self.choices_file, f"{self.name}'s choices")]
            if sorted(recorded) != growths:
                raise LaggrowError(f"{self.choices_file}: choices of stages {recorded}, expected one at each growth "
                                   f"(stages {growths}) of the finished {self.name} ({again})")
        rows = store.read_jsonl(self.curves, "stacking curves") if self.curves.is_file() else []
        have = {(r.get("step"), r.get("point")) for r in rows
                if (r.get("method"), r.get("seed")) == (self.method, self.seed)}
        have |= {(step, "stage end") for step, point in have if point in ("train", "probe")}
        missing = sorted(self.expected_rows() - have)
        if missing:
            shown = ", ".join(f"{point} at step {step}" for step, point in missing[:4])
            more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
            raise LaggrowError(f"{self.curves}: no rows of the finished {self.name} ({shown}{more}) ({again})")

    def result(self) -> dict[str, Any]:
        """This run's entry of stack.json, read back from its final model and its choices."""
        summary = store.read_json(self.model_dir / store.SUMMARY_FILE, f"{self.name}'s summary")
        entry = store.require_keys(summary, ("stacked",), self.model_dir / store.SUMMARY_FILE,
                                   f"{self.name}'s summary")["stacked"]
        choices = store.read_jsonl(self.choices_file, f"{self.name}'s choices") if self.choices_file.is_file() else []
        return {**entry, "choices": [c["choice"] for c in choices if c.get("choice") is not None]}

    def _row(self, stage: Stage, step: int, point: str, test: tuple[float, float | None], train_loss: float | None,
             progress: Progress) -> dict[str, Any]:
        """One curves.jsonl row: `test` is the test set's (mean loss, its SE over windows)."""
        loss, se = test
        return {"method": self.method, "seed": self.seed, "stage": stage.stage, "depth": stage.depth, "step": step,
                "point": point, "test_loss": float(loss), "test_loss_se": None if se is None else float(se),
                "train_loss": None if train_loss is None else float(train_loss),
                "tokens": progress.tokens, "flops": progress.flops}

    def _measure(self, params: dict, depth: int) -> tuple[float, float | None]:
        """The test set's loss of `params` and its SE over windows: measurement, charged to no method."""
        return train.mean_and_se(train.evaluate_windows(params, self.plan.model_at(depth), self.test))

    def _keep_records_until(self, stage: int) -> None:
        """Drop this run's curve rows and choices of stages after `stage` (written by a process
        that was stopped before it checkpointed them)."""
        rows = store.read_jsonl(self.curves, "stacking curves", repair=True) if self.curves.is_file() else []
        kept = [r for r in rows if (r.get("method"), r.get("seed")) != (self.method, self.seed) or r["stage"] <= stage]
        if kept != rows:
            store.rewrite_jsonl(self.curves, kept)
        if self.choices_file.is_file():
            choices = store.read_jsonl(self.choices_file, f"{self.name}'s choices", repair=True)
            kept = [c for c in choices if c["stage"] <= stage]
            if kept != choices:
                store.rewrite_jsonl(self.choices_file, kept)

    # ---- states -----------------------------------------------------------------------------------

    def _restore(self, ckpt: Checkpointer) -> tuple[dict, Progress] | None:
        """The newest intact stage checkpoint (damaged newer ones reported and deleted), or None."""
        by_end = {s.end: s for s in self.stages}
        damaged = []
        for step in sorted(ckpt.steps(), reverse=True):
            stage = by_end.get(step)
            reason = "not a stage's last step" if stage is None else ckpt.verify(step)
            if reason is None:
                try:
                    state, _ = ckpt.restore(abstract_state(self.plan, self.train_cfg, stage.depth), step=step)
                except CheckpointDamaged as err:  # CheckpointUnreadable is the machine's: it is raised as it is
                    reason = str(err)
            if reason is None:
                if damaged:
                    ckpt.discard(damaged)
                meta = ckpt.restored_meta
                compute = meta.get("compute")
                if not isinstance(compute, dict) or not all(isinstance(compute.get(k), int) for k in COMPUTE_KEYS):
                    raise LaggrowError(f"{ckpt.step_dir(step)}: its manifest holds no compute record (expected one "
                                       "written by laggrow stack; is it damaged?)")
                return state, Progress(stage.stage, {k: compute[k] for k in COMPUTE_KEYS},
                                       float(meta.get("seconds") or 0.0))
            warn(f"warning: stage checkpoint {step} in {ckpt.directory} is damaged ({reason}); "
                 "falling back to an earlier stage (or the start, if none is intact)")
            damaged.append(step)
        if damaged:
            ckpt.discard(damaged)
        return None

    def _fresh(self) -> dict:
        if self.source is not None and self.method != "scratch":
            return self.source.state(self.train_cfg, self.plan.stack.optimizer_state)
        depth = self.stages[0].depth
        params = model.init_params(self.plan.model_at(depth), jax.random.key(self.init_seed))
        return train.init_state(params, train.make_optimizer(self.train_cfg))

    def _batch(self, i: int) -> np.ndarray:
        return self.data.train_batch(self.data_start + i, self.train_cfg.batch_size, self.init_seed)

    # ---- running ----------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Run what is left of this method and write its final model; returns its stack.json entry."""
        if self.finished():
            self.check_finished_records()
            return self.result()
        store.ensure_dir(self.state_dir, "stacking directory")
        with Checkpointer(self.state_dir, fingerprint=self.fingerprint) as ckpt:
            restored = self._restore(ckpt)
            if restored is None:
                self._keep_records_until(0)
                self.choices_file.unlink(missing_ok=True)
                state = self._fresh()
                progress = Progress(0, dict.fromkeys(COMPUTE_KEYS, 0), 0.0)
                test = self._measure(state["params"], self.stages[0].depth)
                store.append_jsonl(self.curves, [self._row(self.stages[0], 0, "init", test, None, progress)])
            else:
                state, progress = restored
                self._keep_records_until(progress.stage)
                self.on_event(f"{self.name}: resumed after stage {progress.stage} (step {int(state['step'])})")
            for stage in self.stages[progress.stage:]:
                t0 = time.perf_counter()
                if stage.stage > 1:
                    state = self._grow(state, stage, progress)
                state = self._train(state, stage, progress)
                progress.stage = stage.stage
                progress.seconds += time.perf_counter() - t0
                if stage.steps:  # a source's stage is the source: nothing to keep
                    ckpt.save(state, data_position=self.data_start + stage.end, step=stage.end,
                              meta={"stage": stage.stage, "compute": dict(progress.compute),
                                    "seconds": progress.seconds})
        self._check_compute(progress)
        self._write_model(state, progress)
        # the final model holds the last state; the stage checkpoints were only for resuming
        shutil.rmtree(self.state_dir / store.CHECKPOINT_DIR, ignore_errors=True)
        return self.result()

    def _grow(self, state: dict, stage: Stage, progress: Progress) -> dict:
        """The state grown into `stage`: by the method's fixed candidate, or by adaptive's choice."""
        plan, block = self.plan, self.plan.stack.block
        old = stage.depth - block
        src, dst = plan.model_at(old), plan.model_at(stage.depth)
        key = jax.random.fold_in(jax.random.key(self.init_seed), stage.stage)
        fixed = {"top": f"block{top_block(old, block)}", "middle": f"block{middle_block(old, block)}"}
        if self.method == "adaptive":
            candidates = plan.candidates(stage)
        else:
            candidates = [fixed_candidate(self.method, old, block)]
        grown = [growth_choice.grow_state(state, c, src, dst, self.train_cfg, key, plan.stack.optimizer_state)
                 for c in candidates]
        if len(grown) > 1:
            return self._choose(stage, candidates, grown, fixed, progress)
        # nothing to choose: the growth is applied, as top and middle do
        record = growth_choice.choice_record(stage.stage, stage.start, old, stage.depth, candidates, 0, fixed["top"],
                                       fixed["middle"], None)
        self._record_choice(stage, record)
        test = self._measure(grown[0]["params"], stage.depth)
        store.append_jsonl(self.curves, [self._row(stage, stage.start, "growth", test, None, progress)])
        self.on_event(f"{self.name}: stage {stage.stage}, {old} -> {stage.depth} layers, {candidates[0].name}")
        return grown[0]

    def _choose(self, stage: Stage, candidates: list, grown: list[dict], fixed: dict[str, str],
                progress: Progress) -> dict:
        """Adaptive's probe on the selection set, charged; its rows measured on the test set."""
        plan, k = self.plan, self.plan.stack.probe_steps
        old = stage.depth - plan.stack.block
        predictor = get_predictor(plan.stack.predictor)
        result = growth_choice.probe(grown, plan.model_at(stage.depth), self.train_cfg, self._batch, self.selection,
                               plan.probe_eval_steps(), predictor.fn, horizon=stage.steps)
        w = result.winner
        # the choice known, the winner's grown state (before its probe steps) is measured on the test set
        test = self._measure(grown[w]["params"], stage.depth)
        growth_row = self._row(stage, stage.start, "growth", test, None, progress)
        progress.compute["train_flops"] += k * plan.step_flops(stage.depth)
        progress.compute["train_tokens"] += k * plan.tokens_per_step
        for key_name, value in plan.probe_charge(stage).items():
            progress.compute[key_name] += value
        test = self._measure(result.state["params"], stage.depth)
        probe_row = self._row(stage, stage.start + k, "probe", test, result.train_loss, progress)
        record = growth_choice.choice_record(stage.stage, stage.start, old, stage.depth, candidates, w, fixed["top"],
                                       fixed["middle"], plan.stack.predictor, result, k)
        self._record_choice(stage, record)
        store.append_jsonl(self.curves, [growth_row, probe_row])
        losses = ", ".join(f"{c.name} {result.losses(k)[i]:.4f}" for i, c in enumerate(candidates))
        tied = f"; tied with it: {', '.join(record['tied'])}" if record["tied"] else ""
        self.on_event(f"{self.name}: stage {stage.stage}, {old} -> {stage.depth} layers, chose {candidates[w].name} "
                      f"(selection loss at K={k}: {losses}{tied})")
        return result.state

    def _record_choice(self, stage: Stage, record: dict) -> None:
        store.append_jsonl(self.choices_file, [{"stage": stage.stage, "choice": record}])

    def _train(self, state: dict, stage: Stage, progress: Progress) -> dict:
        """Train from the state's step to the stage's end, recording every evaluation and the end."""
        model_cfg = self.plan.model_at(stage.depth)
        start = int(state["step"])
        base_flops, base_tokens = progress.compute["train_flops"], progress.compute["train_tokens"]
        step_flops, step_tokens = self.plan.step_flops(stage.depth), self.plan.tokens_per_step
        evaluated = {start}  # the init, growth or probe row is already there

        def at(step: int) -> Progress:
            progress.compute["train_flops"] = base_flops + (step - start) * step_flops
            progress.compute["train_tokens"] = base_tokens + (step - start) * step_tokens
            return progress

        def on_record(r: dict) -> None:
            if "eval_loss" in r:  # train_loop evaluates on the windows it is given: the test set's
                test = (r["eval_loss"], r["eval_loss_se"])
                store.append_jsonl(self.curves, [self._row(stage, r["step"], "train", test, r["train_loss"],
                                                           at(r["step"]))])
                evaluated.add(r["step"])

        last: list[dict] = []
        if start < stage.end:
            try:
                state, history = train.train_loop(state, model_cfg, self.train_cfg, self._batch, self.test,
                                                  on_record=on_record, stop_at=stage.end)
            except train.Diverged as err:
                raise LaggrowError(f"{self.name}: {err} in stage {stage.stage}; the stages before it are kept "
                                   "(lower train.lr?)") from None
            except interrupt.Interrupted:
                raise interrupt.Interrupted(f"{self.name} stopped in stage {stage.stage}") from None
            last = history.records[-1:]
        at(stage.end)
        if stage.end not in evaluated:
            train_loss = last[0]["train_loss"] if last else None
            test = self._measure(state["params"], stage.depth)
            store.append_jsonl(self.curves, [self._row(stage, stage.end, "train", test, train_loss, progress)])
        return state

    def _check_compute(self, progress: Progress) -> None:
        """What the run charged must be what the plan says it costs (the FLOPs scratch is given)."""
        expected = self.plan.compute(self.method)
        got = {**progress.compute, "total_flops": int(progress.flops), "total_tokens": progress.tokens}
        if any(got[k] != expected[k] for k in expected):
            raise AssertionError(f"{self.name}: charged {got}, planned {expected}")  # a bug, not the user's

    def _write_model(self, state: dict, progress: Progress) -> None:
        """The final model as a laggrow run directory (a source for grow and pools), assembled
        beside its place and renamed: a run killed here writes it again on the next attempt.
        Its summary.json is a laggrow run's, whose `final_eval_loss` here is the TEST set's loss
        (the same number as stack.json's `final_test_loss`), not the whole held-out stream's that
        `laggrow train` reports."""
        depth = self.stages[-1].depth
        run = self.plan.run_for(self.method, self.seed, depth)
        # the last curve row's windows, one by one, so that gaps can carry the evaluation's noise
        windows = train.evaluate_windows(state["params"], self.plan.model_at(depth), self.test)
        final_loss, final_se = train.mean_and_se(windows)
        steps = self.stages[-1].end
        compute = {**progress.compute, "total_flops": int(progress.flops), "total_tokens": progress.tokens}
        entry = {"method": self.method, "seed": self.seed, "steps": steps, "depth": depth,
                 "stages": [s.to_dict() for s in self.stages],
                 "final_test_loss": final_loss, "final_test_loss_se": final_se,
                 "final_test_windows": [float(w) for w in windows],
                 "model_dir": f"{store.MODELS_DIR}/{self.name}", "seconds": progress.seconds, "compute": compute}
        tokens_per_step = self.plan.tokens_per_step
        summary = {"steps": steps, "complete": True, "final_eval_loss": final_loss, "params": run.model.n_params(),
                   "tokens": steps * tokens_per_step, "flops": float(compute["total_flops"]),
                   "seconds": progress.seconds,
                   "tokens_per_second": steps * tokens_per_step / max(progress.seconds, 1e-9),
                   "heldout_unigram_entropy": self.data.unigram_entropy(), "stacked": entry}
        store.ensure_dir(self.model_dir.parent, "stacking directory")
        with store.staged_dir(self.model_dir, "stacking directory") as tmp:
            store.write_json(tmp / store.CONFIG_FILE, formats.with_version(run.to_dict()))
            store.write_json(tmp / store.DATA_FILE, data_fingerprint(self.data, run.data))
            if self.source is not None:  # the source's tokenizer (an imported model's own, its BPE)
                for name in (store.TOKENIZER_FILE, store.TOKENIZER_CONFIG_FILE):
                    if (self.source.path / name).is_file():
                        store.copy_file(self.source.path / name, tmp / name)
            elif isinstance(self.data.tokenizer, BPETokenizer):
                store.write_file(tmp / store.TOKENIZER_FILE, self.data.tokenizer.save)
            with Checkpointer(tmp, fingerprint=run.to_dict()) as ckpt:
                # the data position is the stream's next batch, so grown runs and pools continue it
                ckpt.save(state, data_position=self.data_start + steps, step=steps)
            store.write_json(tmp / store.SUMMARY_FILE, summary)
        self.on_event(f"{self.name}: finished, test loss {final_loss:.4f} at step {steps}")
