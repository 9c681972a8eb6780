"""The files presentation writes: correlation.{json,csv} with the figures, and report.md (of an
experiment directory, or with stack.png of a stacking directory).

Every record is checked when it is read (`record_schema.py`): a damaged one is one line naming the
file and the key. What is raised while rendering is then a bug, and keeps its traceback. Every
group of outputs is written all or nothing through `store.write_outputs`, so a failure (a full
disk) leaves the previous files or none, never a mix.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from laggrow import formats, run_dir, store
from laggrow import record_schema as schema
from laggrow.errors import LaggrowError
from laggrow.report import figures
from laggrow.report.experiment_markdown import PoolInputs, ReportInputs, render
from laggrow.report.stack_markdown import render_stack

if TYPE_CHECKING:
    from laggrow.analysis.curves import Curves

CSV_COLUMNS = ("step", "n", "spearman", "spearman_lo", "spearman_hi", "kendall", "kendall_lo", "kendall_hi",
               "pearson", "pearson_lo", "pearson_hi", "top1", "top3", "in_best_set", "regret", "regret_frac",
               "compute_fraction", "settled", "leaders")

# the stages whose time report.md shows, in order (the report's own is not known while it is written)
TIMED_STAGES = ("base", "probe", "finals", "correlate")


def correlation_csv(result: dict) -> str:
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


def write_correlation(curves: Curves, result: dict, directory: Path) -> list[Path]:
    """correlation.json/.csv and the figures correlation.png, curves.png, ranks.png, all or
    nothing: what `laggrow correlate` and `laggrow run` write."""
    return store.write_outputs(directory, {
        store.CORRELATION_FILE: store.dumps(result) + "\n",
        store.CORRELATION_CSV: correlation_csv(result),
        store.CORRELATION_PNG: lambda p: figures.plot_correlation(result, p),
        store.CURVES_PNG: lambda p: figures.plot_curves(curves, p, last_step=result["final_step"]),
        store.RANKS_PNG: lambda p: figures.plot_ranks(result, p)})


def write_stability(curves: Curves, stability: dict, directory: Path) -> list[Path]:
    """The figures of a pool with a probe but no finals: curves.png and ranks.png."""
    return store.write_outputs(directory, {
        store.CURVES_PNG: lambda p: figures.plot_curves(curves, p),
        store.RANKS_PNG: lambda p: figures.plot_ranks(stability, p)})


# ---- report.md ---------------------------------------------------------------------------------


def read_experiment_record(out: Path) -> dict:
    out = Path(out)
    if not (out / store.EXPERIMENT_FILE).is_file():
        raise LaggrowError(f"{out}: holds no experiment or stacking run (expected a directory written by laggrow run "
                           "or laggrow stack)")
    what = "experiment record written by laggrow run"
    path = out / store.EXPERIMENT_FILE
    record = schema.check(store.read_json(path, what), schema.EXPERIMENT, path, what)
    names = record.get("pools")  # an experiment of several pools (`pools:`) lists their names
    named = isinstance(names, list) and all(isinstance(n, str) and re.fullmatch(store.POOL_NAME_PATTERN, n)
                                            for n in names)
    if names is not None and not (named and names and len(set(names)) == len(names)):
        raise schema.damaged(path, "pools", "a list of distinct pool names", what)
    return record


def read_pool_inputs(out: Path, name: str | None) -> PoolInputs:
    """One pool's records (None: the one pool of `pool:`), each checked."""
    relative = store.experiment_pool_paths(name)[0]
    pool_dir = out / relative
    meta = schema.check(store.read_json(pool_dir / store.POOL_FILE, "pool record"), schema.POOL_RECORD,
                        pool_dir / store.POOL_FILE, "pool record")
    result = schema.check_correlation(
        store.read_json(pool_dir / store.CORRELATION_FILE, "correlation (run laggrow run first)"),
        pool_dir / store.CORRELATION_FILE, "correlation written by laggrow correlate")
    return PoolInputs(name=name, directory=relative, meta=meta,
                      target=run_dir.read_run_config(pool_dir, what="grown model"), result=result, growth_figure=False)


def timed_stages(names: list[str | None]) -> list[str]:
    """The stages report.md times, as timings.json names them: a pool's stage of `pools:` carries
    the pool's name (`probe x2`, as experiment.StageResult.label spells it)."""
    if names == [None]:
        return list(TIMED_STAGES)
    return ["base", *(f"{stage} {name}" for name in names for stage in TIMED_STAGES[1:])]


def read_inputs(out: Path) -> ReportInputs:
    """Read and check every record report.md is rendered from; one line for a missing or
    damaged one."""
    out = Path(out)
    record = read_experiment_record(out)
    names = record.get("pools") or [None]
    summary_file = out / store.BASE_DIR / store.SUMMARY_FILE
    summary = schema.check(store.read_json(summary_file, "base run's summary (run laggrow run first)"),
                           schema.SUMMARY, summary_file, "base run's summary")
    pools = [read_pool_inputs(out, name) for name in names]
    timings = {}
    if (out / store.TIMINGS_FILE).is_file():
        raw = store.read_json(out / store.TIMINGS_FILE, "stage timings")
        timings = {s: float(raw[s]) for s in timed_stages(names) if isinstance(raw.get(s), int | float)}
    return ReportInputs(record=record, base=run_dir.read_run_config(out / store.BASE_DIR, what="base run"),
                        base_summary=summary, pools=pools, timings=timings)


def _write_growth_curves(out: Path, pool: PoolInputs) -> bool:
    """curves.png again without `scratch`, whose loss sets the y-range of the full figure and
    flattens the growth strategies into one line. False (nothing drawn) without a scratch."""
    from laggrow.analysis.curves import load_curves

    result = pool.result
    curves = load_curves(out / pool.directory)
    keep = [i for i, c in enumerate(curves.candidates) if c.strategy != "scratch"]
    if len(keep) == len(curves.candidates) or not keep:
        return False
    grown = dataclasses.replace(curves, candidates=[curves.candidates[i] for i in keep], loss=curves.loss[keep],
                                flops=curves.flops[keep], tokens=curves.tokens[keep])
    store.write_outputs(out / pool.directory, {
        store.GROWTH_CURVES_PNG: lambda p: figures.plot_curves(grown, p, last_step=result["final_step"])})
    return True


def write_report(out: Path) -> Path:
    """Render OUT/report.md from the records (and draw its own figure); returns its path. The
    records are checked when read: a damaged one is one line naming its file and key."""
    out = Path(out)
    inputs = read_inputs(out)
    pools = [dataclasses.replace(pool, growth_figure=_write_growth_curves(out, pool)) for pool in inputs.pools]
    inputs = dataclasses.replace(inputs, pools=pools)
    text = render(inputs)
    path = out / store.REPORT_FILE
    store.write_text(path, text)
    return path


# ---- a stacking directory (laggrow stack) ------------------------------------------------------------

STACK_WHAT = "stacking record written by laggrow stack"
STACK_KEYS = ("config", "final_steps", "stages", "budget", "evaluation", "seeds", "methods", "runs")


def read_stack_record(directory: Path) -> dict:
    """stack.json, checked: its keys, and its format (a directory written by another version of
    laggrow stack is one line saying so, not a KeyError on a field it lacks)."""
    path = directory / store.STACK_FILE
    if not path.is_file() and (directory / store.STACK_CONFIG_FILE).is_file():
        raise LaggrowError(f"{directory}: a stacking run not finished yet (no {store.STACK_FILE}, which laggrow stack "
                           "writes once every method has run); run the same laggrow stack command again to finish "
                           "it, then report")
    if not path.is_file():
        raise LaggrowError(f"{directory}: holds no stacking run (expected a directory written by laggrow stack)")
    record = formats.migrate(store.read_json(path, STACK_WHAT), path, STACK_WHAT, formats.STACK)
    return store.require_keys(record, STACK_KEYS, path, STACK_WHAT)


def read_stack_rows(directory: Path, record: dict) -> list[dict]:
    """curves.jsonl of a stacking directory, checked against its stack.json (`schema.check_stack`)."""
    directory = Path(directory)
    rows = store.read_jsonl(directory / store.CURVES_FILE, "stacking curves")
    schema.check_stack(record, rows, directory / store.STACK_FILE, directory / store.CURVES_FILE, STACK_WHAT)
    return rows


def write_stack_report(directory: Path) -> Path:
    """Render DIR/report.md and draw DIR/stack.png from stack.json and curves.jsonl, both or
    neither; returns the report's path. The records are checked when read: a damaged one is one
    line naming its file and key."""
    from laggrow.analysis.stacking import best_methods, choice_rows, method_summaries

    directory = Path(directory)
    record = read_stack_record(directory)
    rows = read_stack_rows(directory, record)
    summaries = method_summaries(record, rows)
    text = render_stack(record, summaries, choice_rows(record), best_methods(record))
    store.write_outputs(directory, {store.REPORT_FILE: text,
                                    store.STACK_PNG: lambda p: figures.plot_stack(record, rows, p)})
    return directory / store.REPORT_FILE
