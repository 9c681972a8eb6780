"""A rich progress display for training loops: step bar, loss and tokens/s."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


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
