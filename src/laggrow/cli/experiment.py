"""`laggrow run EXPERIMENT` (the whole LAG study, resumable) and `laggrow report DIR` (report.md again)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import OUT_HELP_METAVAR, out_dir


@user_errors
def run_command(
    experiment: Annotated[Path, typer.Argument(
        help="Experiment YAML: base, base_set, pool (or pools: name -> pool), correlate, out.")],
    out: Annotated[str | None, typer.Option(
        "--out", metavar=OUT_HELP_METAVAR,
        help="Experiment directory [default: the file's `out`, else runs/<experiment name>].")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override an experiment value: section.key=value, e.g. pool.seeds=[1] (repeatable).")] = None,
) -> None:
    """Train the base model, probe each pool, train its finals, correlate and write report.md.

    Every stage whose record is on disk is reused, so a second run redoes nothing and an
    interrupted run resumes.
    """
    from rich.console import Console

    from laggrow import store
    from laggrow.cli.progress import experiment_progress
    from laggrow.jobs import experiment as exp
    from laggrow.report import tables

    console = Console(stderr=True)
    ex = exp.load_experiment(experiment, out_dir(out), overrides)

    def shape(pool: exp.ExperimentPool) -> str:
        p = pool.config
        return (f"{len(p.strategies)} strategies x {len(p.seeds)} seed{'s' if len(p.seeds) > 1 else ''}, "
                f"k={p.lag_steps}, T={p.final_steps}")

    def header() -> None:
        pools = (", ".join(f"pool {pool.name}: {shape(pool)}" for pool in ex.pools) if ex.several
                 else shape(ex.pools[0]))
        console.print(f"[bold]laggrow run[/] {experiment} -> {ex.out}: base {ex.config.base}, {pools}",
                      highlight=False)

    observer = experiment_progress(console)
    with observer.progress:
        exp.run_experiment(ex, observer, on_locked=header)
    for pool in ex.pools:
        if pool.name is not None:
            console.print(f"[bold]pool {pool.name}[/] ({pool.directory})", highlight=False)
        result = store.read_json(pool.directory / store.CORRELATION_FILE, "correlation")
        for line in (tables.init_summary(result), tables.little_lag_summary(result)):
            if line:
                console.print(line, highlight=False)
        if result.get("predictors"):  # per predictor: the little lag, its cost and the regret at k
            console.print(tables.predictor_table(result["predictors"]))
        if result.get("halving"):
            console.print(tables.halving_summary(result["halving"]), highlight=False)
    console.print(f"report: {ex.out / store.REPORT_FILE}", highlight=False)


@user_errors
def report_command(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", help="An experiment directory written by laggrow run, or a stacking directory written "
                            "by laggrow stack.")],
) -> None:
    """Render DIR/report.md again from the records on disk, without training.

    DIR is an experiment directory (laggrow run) or a stacking directory (laggrow stack, whose
    stack.png is drawn again too)."""
    import contextlib

    from laggrow import store
    from laggrow.report.writer import write_report, write_stack_report

    with contextlib.ExitStack() as held:
        if (directory / store.STACK_FILE).is_file() or (directory / store.STACK_CONFIG_FILE).is_file():
            # a stacking run still running holds the lock: one line naming it
            held.enter_context(store.DirLock(directory, "stacking directory"))
            path = write_stack_report(directory)
        else:
            if (directory / store.EXPERIMENT_FILE).is_file():  # not otherwise: the lock would create DIR
                held.enter_context(store.DirLock(directory, "experiment directory"))
            path = write_report(directory)
    typer.echo(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("report")(report_command)
