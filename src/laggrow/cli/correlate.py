"""`laggrow correlate DIR`: how early does the ranking of a pool's strategies settle?

A thin shell over `analysis.correlate` and `report.writer`. Reads DIR/curves.jsonl (and probe.json /
final.json when present), prints the table of rank correlations, top-k hits and regret by step,
names the little lag, and writes DIR/correlation.json, DIR/correlation.csv and the figures
correlation.png, curves.png, ranks.png. A pool with a probe but no finals gets the ranking's
stability between successive steps instead (and curves.png, ranks.png). Every file is written to a
temporary name and renamed only once all of them are ready, so a failure leaves no half-written
output behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.errors import KeyValueError, LaggrowError
from laggrow.resources import MAX_BOOTSTRAP, SEED_MAX

# the keys the successive-halving checks name (analysis.halving), as this command's options
HALVING_OPTIONS = {"halving.first": "--halving-first", "halving.eta": "--halving-eta",
                   "halving.final_step": "--final-step"}


@user_errors
def correlate_command(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Pool directory holding curves.jsonl.")],
    final_step: Annotated[int | None, typer.Option(
        "--final-step", min=0,
        help="Correlate against the loss at this step (default: the last step reached).")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="Spearman rho the ranking must keep from the little lag on.")] = 0.9,
    regret_tol: Annotated[float | None, typer.Option(
        "--regret-tol", min=0.0, help="Regret allowed from the little lag on, in loss units "
        "(default: seed noise with several seeds, else 0.1 x the spread of final losses).")] = None,
    n_boot: Annotated[int, typer.Option(
        "--bootstrap", min=0, help=f"Bootstrap resamples, at most {MAX_BOOTSTRAP:,} (0: no intervals).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the bootstrap.")] = 0,
    predictor: Annotated[str, typer.Option(
        "--predictor", help="What ranks the strategies at a step: loss (LAG), window, slope, extrapolate "
        "(see laggrow.analysis.predictors); every one is compared in the predictors table.")] = "loss",
    halving_first: Annotated[int | None, typer.Option(
        "--halving-first", min=1, help="Replay successive halving on the curves: steps of its first round.")] = None,
    halving_eta: Annotated[int | None, typer.Option(
        "--halving-eta", help="Successive halving: keep the best 1/eta each round (an integer >= 2; "
        "default 2).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of tables.")] = False,
) -> None:
    """How early the ranking settles: rank correlations with the final loss, regret, the little lag.

    Writes correlation.json/.csv and PNG figures into DIR; probe-only pools get ranking stability.
    """
    from rich.console import Console

    from laggrow.analysis.predictors import get_predictor

    get_predictor(predictor)  # an unknown name is one line before anything is read
    if halving_eta is not None and halving_first is None:
        raise LaggrowError("--halving-eta: given without --halving-first (expected --halving-first K0, the steps of "
                           "the first round, to replay successive halving)")
    if halving_eta is not None and halving_eta < 2:
        raise LaggrowError(f"--halving-eta: expected an integer >= 2, got {halving_eta}")
    from laggrow.jobs.correlating import correlate_pool
    from laggrow.report import tables

    halving = {"eta": halving_eta or 2, "first": halving_first} if halving_first is not None else None
    try:
        made = correlate_pool(directory, final_step=final_step, threshold=threshold, regret_tol=regret_tol,
                              n_boot=n_boot, seed=seed, predictor=predictor, halving=halving)
    except KeyValueError as err:  # the halving checks name its keys; here they are options
        if err.key in HALVING_OPTIONS:
            raise err.renamed(HALVING_OPTIONS[err.key]) from None
        raise
    result, written = made.result, made.written
    console = Console()
    if made.stability:
        if as_json:
            typer.echo(json.dumps(result, indent=2, allow_nan=False))
            return
        console.print(tables.stability_table(result))
        for note in result["notes"]:
            console.print(note, highlight=False)
        console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2, allow_nan=False))
        return
    console.print(tables.correlation_table(result))
    console.print(tables.best_set_table(result))
    for line in (tables.best_set_summary(result), tables.init_summary(result), tables.little_lag_summary(result),
                 *result["notes"]):
        if line:
            console.print(line, highlight=False)
    console.print(tables.predictor_table(result["predictors"]))
    for note in tables.fallback_notes(result["predictors"]):
        console.print(note, highlight=False)
    if "halving" in result:
        console.print(tables.halving_summary(result["halving"]), highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("correlate")(correlate_command)
