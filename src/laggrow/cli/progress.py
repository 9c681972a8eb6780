"""Progress displays (rich): a training run's bar, a pool's bar, an experiment's stages.

Only the CLI draws; library code reports through callbacks (`on_record`, `on_eval`) and the
`experiment.Observer` interface, so it can run without a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from laggrow.jobs.experiment import StageResult


class TrainProgress:
    """Context manager; `update(record)` takes a metrics record from the train loop."""

    def __init__(self, console: Console, total: int, description: str = "train"):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("eval {task.fields[eval]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._task = self._progress.add_task(description, total=total, loss="-", eval="-", tps="-")

    def update(self, record: dict) -> None:
        fields = {"loss": f"{record['train_loss']:.3f}", "tps": f"{record['tokens_per_second']:,.0f}"}
        if "eval_loss" in record:
            fields["eval"] = f"{record['eval_loss']:.3f}"
        self._progress.update(self._task, completed=record["step"], **fields)

    def __enter__(self) -> TrainProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)


def pool_progress(console: Console, total_steps: int):
    """A pool's bar with the best candidate so far; returns (progress, on_eval)."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), console=console)
    task = progress.add_task("steps", total=total_steps, best="-")

    def on_eval(step: int, records: list[dict]) -> None:
        losses = [(r["eval_loss"], r["strategy"]) for r in records if r["eval_loss"] is not None]
        best = f"{min(losses)[1]} {min(losses)[0]:.4f}" if losses else "-"
        progress.update(task, completed=step, best=best)

    return progress, on_eval


def experiment_progress(console: Console):
    """A rich display: one progress bar per stage that trains, one status line per stage."""
    from laggrow.jobs.experiment import Observer

    class RichObserver(Observer):
        def __init__(self) -> None:
            self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<9}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=console)
            self.task, self.total = None, 1

        def stage_started(self, stage: str, detail: str, total_steps: int | None, done_steps: int = 0,
                          pool: str | None = None) -> None:
            label = stage if pool is None else f"{stage} {pool}"  # which pool of several it is for
            self.progress.console.print(f"[bold]{label:<9}[/] {detail}", highlight=False)
            self.task = self.progress.add_task(label, total=total_steps, completed=done_steps, info="")
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
            self.progress.console.print(f"[bold]{result.label:<9}[/] {status}", highlight=False)

    return RichObserver()


class TokenizeProgress:
    """`laggrow tokenize`'s bars: documents read (the first pass), then documents tokenized.
    Entered, it is the `on_progress(phase, done, total)` callback."""

    def __init__(self, console: Console):
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self._tasks: dict[str, object] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task({"read": "read", "tokenize": "tokenize"}[phase], total=total)
        self._progress.update(self._tasks[phase], completed=done, total=total)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)
