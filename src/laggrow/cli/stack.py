"""`laggrow stack CONFIG --out DIR`: adaptive gradual stacking against its baselines (laggrow.stack)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import OUT_HELP_METAVAR, out_dir


@user_errors
def stack_command(
    config: Annotated[Path, typer.Argument(help="Stacking YAML: model (the target), data, train (T), stack.")],
    out: Annotated[str, typer.Option("--out", metavar=OUT_HELP_METAVAR,
                                     help="Stacking directory (run again to continue it).")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a value: section.key=value, e.g. stack.probe_steps=8 (repeatable).")] = None,
) -> None:
    """Adaptive gradual stacking (LAG at every growth) against top, middle and scratch stacking.

    Grows depth in stages, choosing what to copy at every growth by a short probe of every
    candidate on a selection set, and compares with always copying the top block, the middle block,
    and scratch, every method trained to the same FLOPs and measured on a separate test set. Killed
    or stopped, the same command continues from each run's last completed stage.
    """
    from rich.console import Console

    from laggrow import store
    from laggrow.analysis.stacking import best_methods, choice_rows, method_summaries
    from laggrow.report import tables
    from laggrow.stack.driver import prepare_stack, run_stack

    console = Console(stderr=True)
    out = out_dir(out)
    prepared = prepare_stack(config, out, overrides)
    plan = prepared.plan
    depths = " -> ".join(str(s.depth) for s in plan.stages)
    steps = ", ".join(f"{m} {plan.method_steps(m)}" for m in plan.stack.methods)
    console.print(f"[bold]laggrow stack[/] {config} -> {prepared.out}: depths {depths} over T={plan.final_steps} "
                  f"(PROP-{plan.stack.alpha:g}), K={plan.stack.probe_steps}, seeds {list(plan.stack.seeds)}; "
                  f"every method at {plan.budget_flops():.4g} FLOPs, in steps: {steps}", highlight=False,
                  soft_wrap=True)
    command = shlex.join(["laggrow", "stack", str(config), "--out", str(out),
                          *[a for o in overrides or [] for a in ("--set", o)]])
    # one event a line, unwrapped: a log to read or grep, not a layout
    record = run_stack(prepared, on_event=lambda line: console.print(line, highlight=False, soft_wrap=True),
                       command=command)
    rows = store.read_jsonl(prepared.out / store.CURVES_FILE, "stacking curves")
    choices = choice_rows(record)
    if choices:
        console.print(tables.stack_choices_table(choices))
    console.print(tables.stack_methods_table(method_summaries(record, rows)))
    best = best_methods(record)
    if best is not None:
        console.print(f"cannot be told from the best: {', '.join(best['members'])} ({best['rule']})", highlight=False,
                      soft_wrap=True)
    console.print(f"report: {prepared.out / store.REPORT_FILE} (figure: {prepared.out / store.STACK_PNG})",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("stack")(stack_command)
