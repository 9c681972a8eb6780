"""`laggrow run EXPERIMENT` (the whole LAG study, resumable) and `laggrow report DIR` (report.md again)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from laggrow.commands import user_errors

if TYPE_CHECKING:
    from rich.console import Console

    from laggrow.experiment import StageResult


def _observer(console: Console):
    """A rich display: one progress bar per stage that trains, one status line per stage."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from laggrow.experiment import Observer

    class RichObserver(Observer):
        def __init__(self) -> None:
            self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<9}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=console)
            self.task, self.total = None, 1

        def stage_started(self, stage: str, detail: str, total_steps: int | None, done_steps: int = 0) -> None:
            self.progress.console.print(f"[bold]{stage:<9}[/] {detail}", highlight=False)
            self.task = self.progress.add_task(stage, total=total_steps, completed=done_steps, info="")
            self.total = total_steps or 1

        def base_record(self, record: dict) -> None:
            info = f"loss {record['train_loss']:.3f}"
            if "eval_loss" in record:
                info += f" eval {record['eval_loss']:.3f}"
            self.progress.update(self.task, completed=record["step"], info=info)

        def pool_eval(self, step: int, records: list[dict]) -> None:
            losses = [(r["eval_loss"], r["strategy"]) for r in records if r["eval_loss"] is not None]
            info = f"best {min(losses)[1]} {min(losses)[0]:.4f}" if losses else ""
            self.progress.update(self.task, completed=step, info=info)

        def stage_finished(self, result: StageResult) -> None:
            if self.task is not None and not result.reused:
                self.progress.update(self.task, completed=self.total, total=self.total)
                self.progress.stop_task(self.task)
            self.task = None
            status = "reused" if result.reused else f"done in {result.seconds:.0f} s"
            self.progress.console.print(f"[bold]{result.stage:<9}[/] {status}", highlight=False)

    return RichObserver()


@user_errors
def run_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML: base, base_set, pool, correlate, out.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Experiment directory [default: the file's `out`, else runs/<experiment name>].")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override an experiment value: section.key=value, e.g. pool.seeds=[1] (repeatable).")] = None,
) -> None:
    """Train the base model, probe the pool, train the finals, correlate and write report.md.

    Every stage whose record is on disk is reused, so a second run redoes nothing and an
    interrupted run resumes.
    """
    import json

    from rich.console import Console

    from laggrow import experiment as exp
    from laggrow import report

    console = Console(stderr=True)
    ex = exp.load_experiment(experiment, out, overrides)
    console.print(f"[bold]laggrow run[/] {experiment} -> {ex.out}: base {ex.config.base}, "
                  f"{len(ex.pool.strategies)} strategies x {len(ex.pool.seeds)} "
                  f"seed{'s' if len(ex.pool.seeds) > 1 else ''}, "
                  f"k={ex.pool.lag_steps}, T={ex.pool.final_steps}", highlight=False)
    observer = _observer(console)
    with observer.progress:
        exp.run_experiment(ex, observer)
    result = json.loads((ex.pool_dir / exp.CORRELATION_FILE).read_text(encoding="utf-8"))
    for line in (report.init_summary(result), report.little_lag_summary(result)):
        if line:
            console.print(line, highlight=False)
    console.print(f"report: {ex.out / exp.REPORT_FILE}", highlight=False)


@user_errors
def report_command(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="An experiment directory written by laggrow run.")],
) -> None:
    """Render DIR/report.md again from the records on disk, without training."""
    from laggrow import report_md

    path = report_md.write_report(directory)
    typer.echo(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("report")(report_command)
