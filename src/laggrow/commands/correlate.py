"""`laggrow correlate DIR`: how early does the ranking of a pool's strategies settle?

Reads DIR/curves.jsonl (and probe.json / final.json when present), prints the table of rank
correlations, top-k hits and regret by step, names the little lag, and writes
DIR/correlation.json, DIR/correlation.csv and the figures correlation.png, curves.png, ranks.png.
A pool with a probe but no finals gets the ranking's stability between successive steps instead
(and curves.png, ranks.png). Every file is written to a temporary name and renamed only once all of
them are ready, so a failure leaves no half-written output behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from laggrow.commands import user_errors
from laggrow.errors import LaggrowError

if TYPE_CHECKING:
    from laggrow.curves import Curves

CSV_COLUMNS = ("step", "n", "spearman", "spearman_lo", "spearman_hi", "kendall", "kendall_lo", "kendall_hi",
               "pearson", "pearson_lo", "pearson_hi", "top1", "top3", "regret", "regret_frac",
               "compute_fraction", "settled", "leaders")


def _csv_text(result: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in result["rows"]:
        flat = dict(row)
        for stat in ("spearman", "kendall", "pearson"):
            flat[f"{stat}_lo"], flat[f"{stat}_hi"] = row[f"{stat}_ci"] or (None, None)
        flat["leaders"] = ";".join(row["leaders"])
        writer.writerow(["" if flat[c] is None else flat[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_outputs(directory: Path, writers: dict[str, Callable[[Path], None]]) -> list[Path]:
    """Run each writer on a temporary file in `directory`, then rename them all into place.
    If any writer fails, every temporary file is removed and nothing is renamed."""
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            # a unique hidden name beside the target, so the rename is atomic and permissions ordinary
            tmp = directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            staged.append((tmp, directory / name))
            write(tmp)
    except BaseException as err:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise LaggrowError(f"{directory}: cannot write the outputs ({err}); expected a writable "
                               "pool directory") from None
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]


def _text_writer(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def write_correlation(curves: Curves, result: dict, directory: Path) -> list[Path]:
    """correlation.json/.csv and the figures correlation.png, curves.png, ranks.png, all or nothing.
    Public so that `laggrow run` writes exactly what `laggrow correlate` writes."""
    from laggrow import report

    text = json.dumps(result, indent=2, allow_nan=False)
    return write_outputs(directory, {
        "correlation.json": _text_writer(text + "\n"),
        "correlation.csv": _text_writer(_csv_text(result)),
        "correlation.png": lambda p: report.plot_correlation(result, p),
        "curves.png": lambda p: report.plot_curves(curves, p, last_step=result["final_step"]),
        "ranks.png": lambda p: report.plot_ranks(result, p)})


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
    n_boot: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples (0: no intervals).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of tables.")] = False,
) -> None:
    """How early the ranking settles: rank correlations with the final loss, regret, the little lag.

    Writes correlation.json/.csv and PNG figures into DIR; probe-only pools get ranking stability.
    """
    from rich.console import Console

    from laggrow import analysis, report

    curves = analysis.load_curves(directory)
    out_dir = Path(curves.source).parent
    console = Console()
    if final_step is None and not analysis.has_finals(curves):
        stability = analysis.ranking_stability(curves).to_dict()
        written = write_outputs(out_dir, {
            "curves.png": lambda p: report.plot_curves(curves, p),
            "ranks.png": lambda p: report.plot_ranks(stability, p)})
        if as_json:
            typer.echo(json.dumps(stability, indent=2, allow_nan=False))
            return
        console.print(report.stability_table(stability))
        for note in stability["notes"]:
            console.print(note, highlight=False)
        console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)
        return

    result = analysis.correlate(curves, final_step=final_step, threshold=threshold,
                                regret_tol=regret_tol, n_boot=n_boot, seed=seed).to_dict()
    written = write_correlation(curves, result, out_dir)
    if as_json:
        typer.echo(json.dumps(result, indent=2, allow_nan=False))
        return
    console.print(report.correlation_table(result))
    spread = report.seed_spread_table(result)
    if spread is not None:
        console.print(spread)
    for line in (report.init_summary(result), report.little_lag_summary(result), *result["notes"]):
        if line:
            console.print(line, highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("correlate")(correlate_command)
