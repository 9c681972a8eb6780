"""A stacking directory (`laggrow stack CONFIG --out DIR`): the checks, every method of every seed in
turn, then stack.json, report.md and stack.png.

    DIR/stack-config.json   the resolved run and stack sections (a second run must match them) and
                            the format_version
    DIR/data.json           the corpus's fingerprint (a changed corpus is refused on resume)
    DIR/tokenizer.json      the BPE tokenizer, when there is one (without a source)
    DIR/curves.jsonl        every evaluation of every method and seed
    DIR/stages/, DIR/models/  see stack/method.py
    DIR/stack.json          the results, once every run has finished (schema in docs/design.md)

Everything that can be wrong with the input (the config, the corpus and its held-out split, --out)
is found by `prepare_stack` before anything is written. Run again on the same DIR, the same command
continues each unfinished run from its last completed stage and redoes nothing that has finished;
a DIR of an earlier record format (losses read on the whole held-out stream, budgets unequal) is
refused in one line (`formats.migrate`) rather than continued with records of two meanings. A
stack from a source (`stack.source`) records what identifies the source in stack-config.json; a
rerun whose source has changed since (another checkpoint, other weights) is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import formats, hosts, interrupt, run_dir, store
from laggrow.config_engine import differences
from laggrow.data import BPETokenizer, Dataset, data_fingerprint, load_dataset
from laggrow.errors import LaggrowError
from laggrow.stack.plan import StackPlan, load_stack_plan, plan_with_vocab


@dataclass
class PreparedStack:
    plan: StackPlan
    out: Path
    dataset: Dataset
    resume: bool  # DIR already holds this stacking run (finished or not)
    eval_sets: dict[str, np.ndarray]  # evaluation_sets(dataset, plan)
    source: dict[str, Any] | None = None  # run_dir.source_record of stack.source, and what it means here


def evaluation_sets(dataset: Dataset, plan: StackPlan) -> dict[str, np.ndarray]:
    """The two held-out sets, `data.eval_batches` x `data.eval_batch_size` windows each: the
    selection set adaptive's probe chooses on, and the test set every recorded loss is read on."""
    n, size = plan.run.data.eval_batches, plan.run.data.eval_batch_size
    return {"selection": dataset.selection_batches(n, size), "test": dataset.test_batches(n, size)}


def evaluation_record(dataset: Dataset, plan: StackPlan) -> dict[str, Any]:
    """stack.json's `evaluation`: how the held-out documents were split, and which set does what."""
    return {**(dataset.split or {}), "windows": plan.run.data.eval_batches * plan.run.data.eval_batch_size,
            "window_tokens": plan.run.data.seq_len,
            "selection": "adaptive's probe: every candidate's loss, its score, the choice and its ties",
            "test": "every curves.jsonl row and every final loss: measurement every method gets, charged to none"}


def prepare_stack(config: Path, out: Path, overrides: list[str] | None = None) -> PreparedStack:
    """Check the config, --out and the corpus; nothing is written."""
    hosts.require_one_process("laggrow stack")  # its runs train on one device of one process
    plan = load_stack_plan(config, overrides)
    out = Path(out).absolute()
    store.check_writable_target(out, "--out")
    if out.is_dir():
        store.check_unlocked(out, "--out")
    recorded = out / store.STACK_CONFIG_FILE
    if out.is_dir() and not recorded.is_file() and any(p.name != store.LOCK_FILE for p in out.iterdir()):
        raise LaggrowError(f"--out {out}: not empty and not a stacking directory (expected a new or empty "
                           "directory, or one written by laggrow stack)")
    source = source_record(plan) if plan.from_source else None
    if source is not None:  # the source's model reads its own tokens, as a pool's candidates do
        tokenizer = run_dir.load_tokenizer(Path(plan.stack.source), run_dir.read_run_config(Path(plan.stack.source)))
        dataset = load_dataset(plan.run.data, tokenizer=tokenizer)
    else:
        dataset = load_dataset(plan.run.data, out if recorded.is_file() else None)
    plan = plan_with_vocab(plan, dataset.vocab_size)
    eval_sets = evaluation_sets(dataset, plan)  # a held-out split too small for either set is refused here
    if recorded.is_file():
        what = "stacking config written by laggrow stack"
        then = formats.migrate(store.read_json(recorded, what), recorded, what, formats.STACK)
        _check_same_source(out, source, then)
        diffs = differences(config_record(plan, source), then)
        if diffs:
            raise LaggrowError(f"--out {out}: holds a different stacking run ({'; '.join(diffs[:3])}); "
                               "choose another --out")
        run_dir.check_data(out, plan.run, dataset)
    return PreparedStack(plan, out, dataset, resume=recorded.is_file(), eval_sets=eval_sets, source=source)


def source_record(plan: StackPlan) -> dict[str, Any]:
    """stack.json's `source`: what identifies the source (`run_dir.source_record`), what its moments
    become under the plan's optimizer_state, and that its own compute is sunk."""
    record = run_dir.source_record(Path(plan.stack.source), what="stack.source")
    carried = plan.stack.optimizer_state == "carry" and record["optimizer_moments"]
    why = ("the source's AdamW moments, grown at the first growth" if carried else
           "fresh AdamW moments: the source has none (an import)" if plan.stack.optimizer_state == "carry"
           else "fresh AdamW moments at every growth (optimizer_state: reset)")
    return {**record, "config_path": plan.stack.source, "n_layers": plan.stack.start_layers,
            "optimizer_state": {"carried": carried, "what": why},
            "compute": "the source's own training is sunk: charged to no method"}


def _check_same_source(out: Path, source: dict[str, Any] | None, recorded: dict[str, Any]) -> None:
    """A rerun must start from the very source the directory's runs started from."""
    then = recorded.get("source")
    if source is None or not isinstance(then, dict):
        return  # no source now or then: the configs' comparison says whether that differs
    if (then.get("fingerprint"), then.get("checkpoint_step")) != (source["fingerprint"], source["checkpoint_step"]):
        raise LaggrowError(f"stack.source {source['config_path']}: changed since the stacking run in {out} started "
                           f"(checkpoint {then.get('checkpoint_step')} fingerprint {str(then.get('fingerprint'))[:12]},"
                           f" now {source['checkpoint_step']} {source['fingerprint'][:12]}); expected the same source, "
                           "or choose another --out")


def config_record(plan: StackPlan, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """stack-config.json (written with `formats.with_version`): the plan's sections and (from a
    source) what identifies the source."""
    return {**plan.to_dict(), **({"source": source} if source is not None else {})}


def run_stack(prepared: PreparedStack, on_event: Callable[[str], None] | None = None,
              command: str = "laggrow stack CONFIG --out DIR") -> dict[str, Any]:
    """Run (or continue) every method of every seed, write stack.json and the report; returns the
    stack.json record. `command` is what an interruption tells the user to run again."""
    from laggrow.report.writer import write_stack_report
    from laggrow.stack.method import MethodRun, SourceModel

    plan, out = prepared.plan, prepared.out
    with interrupt.deferred(), store.DirLock(out, "--out"):
        # The config first: it marks the directory as this stacking run's, and what follows is
        # written again (if missing) by the next attempt when this one is killed in between.
        store.write_json(out / store.STACK_CONFIG_FILE, formats.with_version(config_record(plan, prepared.source)),
                         if_changed=True)
        if (isinstance(prepared.dataset.tokenizer, BPETokenizer) and not plan.from_source
                and not (out / store.TOKENIZER_FILE).is_file()):
            store.write_file(out / store.TOKENIZER_FILE, prepared.dataset.tokenizer.save)
        if not (out / store.DATA_FILE).is_file():
            store.write_json(out / store.DATA_FILE, data_fingerprint(prepared.dataset, plan.run.data))
        results = []
        source = SourceModel(plan) if plan.from_source else None
        for seed in plan.stack.seeds:
            for method in plan.stack.methods:
                run = MethodRun(plan, method, seed, prepared.dataset, out, prepared.eval_sets, on_event, source)
                try:
                    results.append(run.execute())
                except interrupt.Interrupted as err:
                    raise interrupt.Interrupted(f"{err}; the completed stages are kept in {out}; continue with: "
                                                f"{command}") from None
        record = stack_record(plan, results, evaluation_record(prepared.dataset, plan), prepared.source)
        store.write_json(out / store.STACK_FILE, formats.with_version(record))
        write_stack_report(out)
    return record


def stack_record(plan: StackPlan, results: list[dict[str, Any]], evaluation: dict[str, Any],
                 source: dict[str, Any] | None = None) -> dict[str, Any]:
    """stack.json (written with `formats.with_version`): the config, the stage schedule, the
    equal-FLOPs budget and every method's steps and FLOPs under it, the held-out split and which
    set does what, the source (`source_record`, or null), and one entry per method and seed."""
    basis = ("adaptive's total: its training, the other candidates' probe steps and the probe's selection-set "
             "evaluations" if "adaptive" in plan.stack.methods else "the stacking schedule's training over T")
    return {"config": plan.to_dict(), "final_steps": plan.final_steps,
            "stages": [s.to_dict() for s in plan.stages],
            "budget": {"flops": plan.budget_flops(), "basis": basis, "methods": plan.budgets(),
                       "target_step_flops": plan.step_flops(plan.run.model.n_layers)},
            "evaluation": evaluation, "seeds": list(plan.stack.seeds), "methods": list(plan.stack.methods),
            "source": source, "runs": results}
