"""Presentation of pool results: rich tables, one-line summaries and matplotlib figures.

Nothing here computes a statistic. Tables and figures take the plain dicts of
`CorrelationResult.to_dict()` / `StabilityResult.to_dict()` (what correlation.json holds), so a
report can be re-rendered from the files on disk; only `plot_curves` needs the records themselves.
Figures use the Agg canvas directly (no pyplot state, no display needed). matplotlib is imported
inside the plotting functions so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from laggrow.curves import Curves

NONE = "-"


def _num(value: float | None, spec: str = ".2f") -> str:
    return NONE if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.3g}%"


def _step_label(step: int, result: dict) -> str:
    for marker, at in (("init", 0), ("lag", result.get("lag_steps")), ("final", result.get("final_step"))):
        if step == at:
            return f"{step} {marker}"
    return str(step)


def correlation_table(result: dict) -> Table:
    """One row per evaluated step; step 0 (the view from initialisation) sits in its own section.
    Rows from the little lag on, where the ranking has settled, are marked. Sized for 80 columns:
    top-3 and the other intervals are in correlation.json / .csv."""
    ci = round(100 * result["bootstrap"]["ci_level"])
    table = Table(title=f"How early the ranking settles: {len(result['strategies'])} strategies against "
                        f"the loss at step {result['final_step']}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption="regret: final loss of the leader at that step minus the best (share of the spread)\n"
                          "cost: the pool's training compute so far over its final compute\n"
                          "* settled: rho and regret within bounds from here to the final step",
                  caption_justify="left")
    for name in ("step", f"rho [{ci}% CI]", "tau", "r", "top-1", "regret", "cost"):
        table.add_column(name, justify="left" if name.startswith("rho") else "right", no_wrap=True)
    for row in result["rows"]:
        interval = row["spearman_ci"]
        rho = _num(row["spearman"]) + (f" [{interval[0]:.2f},{interval[1]:.2f}]" if interval else "")
        regret = f"{_num(row['regret'], '.3g')} ({_pct(row['regret_frac'])})" if row["regret"] is not None \
            else NONE
        table.add_row(
            _step_label(row["step"], result) + (" *" if row["settled"] else ""), rho, _num(row["kendall"]),
            _num(row["pearson"]), _num(row["top1"]), regret, _pct(row["compute_fraction"]),
            style="green" if row["settled"] else None, end_section=row["step"] == 0)
    return table


def little_lag_summary(result: dict) -> str:
    """The little lag in one sentence, with the rule and the tolerance it was found under."""
    lag, final = result["little_lag"], result["final_step"]
    rule = (f"rho >= {lag['threshold']:g} and regret <= {lag['regret_tol']:.3g} "
            f"({lag['regret_tol_source']})")
    if lag["step"] is None:
        return f"little lag: none before the final step {final}; the ranking has not settled ({rule})"
    cost = NONE if lag["compute_fraction"] is None else f"{100 * lag['compute_fraction']:.3g}%"
    return (f"little lag: step {lag['step']}, costing {cost} of the pool's final training compute "
            f"(by {lag['compute_basis']}); from there to step {final}, {rule}")


def init_summary(result: dict) -> str | None:
    """What choosing at initialisation would do: the step-0 line in words."""
    init = result.get("init")
    if not init:
        return None
    preserving = ", ".join(init["function_preserving"]) or "none known"
    return (f"at initialisation (step 0): rho {_num(init['spearman'])}, top-1 {_num(init['top1'])}, "
            f"regret {_num(init['regret'], '.3g')}; leader(s) {', '.join(init['leaders'])}; "
            f"function-preserving: {preserving}")


def seed_spread_table(result: dict) -> Table | None:
    """Final loss per strategy, mean and sd over its seeds; None when every strategy has one seed."""
    strategies = result["strategies"]
    if all(len(s["seeds"]) < 2 for s in strategies):
        return None
    table = Table(title="Final loss over seeds", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("strategy", "seeds", "final loss", "sd"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for s in sorted(strategies, key=lambda s: s["final_loss"]):
        table.add_row(s["strategy"], str(len(s["seeds"])), _num(s["final_loss"], ".4f"),
                      _num(s["final_loss_sd"], ".4f"))
    return table


def stability_table(result: dict) -> Table:
    """Probe-only pools: how much the ranking moves between successive evaluated steps."""
    table = Table(title=f"Ranking stability up to step {result['last_step']} (no finals yet)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("step", "rho vs previous", "tau vs previous", f"rho vs step {result['last_step']}", "leader"):
        table.add_column(name, justify="left" if name == "leader" else "right")
    for row in result["rows"]:
        leader = ", ".join(row["leaders"]) + (" (changed)" if row["leader_changed"] else "")
        table.add_row(_step_label(row["step"], result), _num(row["spearman_vs_prev"]),
                      _num(row["kendall_vs_prev"]), _num(row["spearman_vs_last"]), leader)
    return table


def ranking_table(rows: list[dict[str, Any]], title: str = "Ranking") -> Table:
    """Rows with rank, strategy, function_preserving, eval_loss_init, eval_loss, gap (to the best) and
    optionally diverged, as the probe command prints them."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("rank", "strategy", "function-preserving", "loss at init", "loss", "gap to best"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for row in rows:
        preserving = row.get("function_preserving")
        loss = "diverged" if row.get("diverged") else _num(row.get("eval_loss"), ".4f")
        table.add_row(str(row["rank"]), row["strategy"], NONE if preserving is None else
                      ("yes" if preserving else "no"), _num(row.get("eval_loss_init"), ".4f"),
                      loss, _num(row.get("gap"), "+.4f"), style="red" if row.get("diverged") else None)
    return table


# ---- figures ----------------------------------------------------------------------------------

def _figure(width: float = 7.0, height: float = 4.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _step_axis(ax: Any, max_step: int, pad: float = 1.25) -> None:
    # symlog: logarithmic from step 1 on, linear below, so step 0 (initialisation) stays on the axis
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(max_step, 1) * pad)
    ax.set_xlabel("training steps after growth (0 = at initialisation)")
    ax.grid(True, alpha=0.3)


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", dpi=120)


def plot_correlation(result: dict, path: Path) -> None:
    """Spearman rho against step with its bootstrap band, the threshold and the little lag."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = [r for r in result["rows"] if r["spearman"] is not None]
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["spearman"] for r in rows], "o-", label="Spearman rho")
    ax.plot(steps, [r["kendall"] for r in rows], "s--", ms=3, alpha=0.7, label="Kendall tau")
    banded = [r for r in rows if r["spearman_ci"]]
    if banded:
        ax.fill_between([r["step"] for r in banded], [r["spearman_ci"][0] for r in banded],
                        [r["spearman_ci"][1] for r in banded], alpha=0.2,
                        label=f"{round(100 * result['bootstrap']['ci_level'])}% bootstrap CI")
    lag = result["little_lag"]
    ax.axhline(lag["threshold"], color="grey", ls=":", label=f"threshold {lag['threshold']:g}")
    if lag["step"] is not None:
        ax.axvline(lag["step"], color="green", ls="--", label=f"little lag: step {lag['step']}")
    _step_axis(ax, result["final_step"])
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(f"rank correlation with loss at step {result['final_step']}")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def _colours(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plot_curves(curves: Curves, path: Path, last_step: int | None = None) -> None:
    """Every candidate's eval loss by step, one colour per strategy; a cross where a candidate diverged."""
    import numpy as np

    fig = _figure()
    ax = fig.add_subplot()
    names = sorted({c.strategy for c in curves.candidates})
    colour = _colours(names)
    keep = curves.steps <= (last_step if last_step is not None else curves.steps.max())
    labelled: set[str] = set()
    crossed = False
    for cand, loss in zip(curves.candidates, curves.loss, strict=True):
        ok = keep & np.isfinite(loss)
        label = None if cand.strategy in labelled else cand.strategy
        labelled.add(cand.strategy)
        ax.plot(curves.steps[ok], loss[ok], "-", lw=1.2, color=colour[cand.strategy], label=label, alpha=0.85)
        if cand.diverged_at is not None and ok.any():
            ax.plot(curves.steps[ok][-1], loss[ok][-1], "x", color=colour[cand.strategy], ms=8,
                    label=None if crossed else "diverged after this")
            crossed = True
    if curves.lag_steps is not None:
        ax.axvline(curves.lag_steps, color="grey", ls=":", label=f"lag k = {curves.lag_steps}")
    _step_axis(ax, int(curves.steps[keep].max()))
    ax.set_ylabel("eval loss")
    ax.legend(fontsize="small", ncol=2)
    _save(fig, path)


def plot_ranks(result: dict, path: Path) -> None:
    """Rank of each strategy (1 = lowest loss, seeds averaged) by step: how the order changes."""
    fig = _figure()
    ax = fig.add_subplot()
    strategies = result["strategies"]
    # the same colours as plot_curves, which also shows the strategies left out here
    colour = _colours(sorted({s["strategy"] for s in strategies} | {e["strategy"] for e in result["excluded"]}))
    steps = result["steps"]
    for s in strategies:
        points = [(x, r) for x, r in zip(steps, s["rank"], strict=True) if r is not None]
        if not points:
            continue
        ax.plot(*zip(*points, strict=True), "o-", ms=3, color=colour[s["strategy"]])
        ax.annotate(s["strategy"], points[-1], xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize="small", color=colour[s["strategy"]])
    _step_axis(ax, steps[-1], pad=4.0)  # room for the names at the right end
    ax.set_ylim(len(strategies) + 0.5, 0.5)  # rank 1 on top
    ax.set_yticks(range(1, len(strategies) + 1))
    ax.set_ylabel("rank by eval loss (1 = best)")
    _save(fig, path)
