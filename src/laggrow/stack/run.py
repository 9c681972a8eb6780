"""A stacking directory (`laggrow stack CONFIG --out DIR`): the checks, every method of every seed in
turn, then stack.json, report.md and stack.png.

    DIR/stack-config.json   the resolved run and stack sections (a second run must match them)
    DIR/data.json           the corpus's fingerprint (a changed corpus is refused on resume)
    DIR/tokenizer.json      the BPE tokenizer, when there is one
    DIR/curves.jsonl        every evaluation of every method and seed
    DIR/stages/, DIR/models/  see stack/runner.py
    DIR/stack.json          the results, once every run has finished (schema in docs/design.md)

Everything that can be wrong with the input (the config, the corpus, --out) is found by
`prepare_stack` before anything is written. Run again on the same DIR, the same command continues
each unfinished run from its last completed stage and redoes nothing that has finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow import interrupt, runs, store
from laggrow.config import differences
from laggrow.data import BPETokenizer, Dataset, data_fingerprint, load_dataset
from laggrow.errors import LaggrowError
from laggrow.stack.config import StackPlan, load_stack_plan, plan_with_vocab

RECORD_FORMAT = 1


@dataclass
class PreparedStack:
    plan: StackPlan
    out: Path
    dataset: Dataset
    resume: bool  # DIR already holds this stacking run (finished or not)


def prepare_stack(config: Path, out: Path, overrides: list[str] | None = None) -> PreparedStack:
    """Check the config, --out and the corpus; nothing is written."""
    plan = load_stack_plan(config, overrides)
    out = Path(out).absolute()
    store.check_writable_target(out, "--out")
    if out.is_dir():
        store.check_unlocked(out, "--out")
    recorded = out / store.STACK_CONFIG_FILE
    if out.is_dir() and not recorded.is_file() and any(p.name != store.LOCK_FILE for p in out.iterdir()):
        raise LaggrowError(f"--out {out}: not empty and not a stacking directory (expected a new or empty "
                           "directory, or one written by laggrow stack)")
    dataset = load_dataset(plan.run.data, out if recorded.is_file() else None)
    plan = plan_with_vocab(plan, dataset.vocab_size)
    if recorded.is_file():
        diffs = differences(plan.to_dict(), store.read_json(recorded, "stacking config written by laggrow stack"))
        if diffs:
            raise LaggrowError(f"--out {out}: holds a different stacking run ({'; '.join(diffs[:3])}); "
                               "choose another --out")
        runs.check_data(out, plan.run, dataset)
    return PreparedStack(plan, out, dataset, resume=recorded.is_file())


def run_stack(prepared: PreparedStack, on_event: Callable[[str], None] | None = None,
              command: str = "laggrow stack CONFIG --out DIR") -> dict[str, Any]:
    """Run (or continue) every method of every seed, write stack.json and the report; returns the
    stack.json record. `command` is what an interruption tells the user to run again."""
    from laggrow.report.writer import write_stack_report
    from laggrow.stack.runner import MethodRun

    plan, out = prepared.plan, prepared.out
    with interrupt.deferred(), store.DirLock(out, "--out"):
        # The config first: it marks the directory as this stacking run's, and what follows is
        # written again (if missing) by the next attempt when this one is killed in between.
        store.write_json(out / store.STACK_CONFIG_FILE, plan.to_dict(), if_changed=True)
        if isinstance(prepared.dataset.tokenizer, BPETokenizer) and not (out / store.TOKENIZER_FILE).is_file():
            store.write_file(out / store.TOKENIZER_FILE, prepared.dataset.tokenizer.save)
        if not (out / store.DATA_FILE).is_file():
            store.write_json(out / store.DATA_FILE, data_fingerprint(prepared.dataset, plan.run.data))
        results = []
        for seed in plan.stack.seeds:
            for method in plan.stack.methods:
                run = MethodRun(plan, method, seed, prepared.dataset, out, on_event)
                try:
                    results.append(run.execute())
                except interrupt.Interrupted as err:
                    raise interrupt.Interrupted(f"{err}; the completed stages are kept in {out}; continue with: "
                                                f"{command}") from None
        record = stack_record(plan, results)
        store.write_json(out / store.STACK_FILE, record)
        write_stack_report(out)
    return record


def stack_record(plan: StackPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
    """stack.json: the config, the stage schedule, and one entry per method and seed."""
    return {"format": RECORD_FORMAT, "config": plan.to_dict(), "final_steps": plan.final_steps,
            "stages": [s.to_dict() for s in plan.stages], "scratch_steps": plan.scratch_steps(),
            "seeds": list(plan.stack.seeds), "methods": list(plan.stack.methods), "runs": results}
