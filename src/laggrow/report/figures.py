"""Figures of pool results, as PNG files: rank correlation by step, loss curves, ranks by step.

Nothing here computes a statistic: the figures take the plain dicts of correlation.json (and the
curves themselves for `plot_curves`). They use the Agg canvas directly (no pyplot state, no
display needed), and matplotlib is imported inside the functions so importing this stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from laggrow.analysis.curves import Curves


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


def plot_stack(record: dict, rows: list[dict], path: Path) -> None:
    """A stacking run's test loss against cumulative FLOPs (probes included), one colour per
    method and one line per seed, its growths marked lightly; each seed's scratch final loss as a
    dotted line, the loss the FLOPs saved are measured at, and the common budget as a vertical
    line. The x axis is logarithmic, so the points at 0 FLOPs (initialisation, far above the rest)
    are left out."""
    fig = _figure()
    ax = fig.add_subplot()
    methods = list(record["methods"])
    colour = _colours(methods)
    curves: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r["method"] in colour and r["test_loss"] is not None and r["flops"] > 0:
            curves.setdefault((r["method"], r["seed"]), []).append(r)
    labelled: set[str] = set()
    marked = False
    for (method, _seed), points in curves.items():
        ax.plot([p["flops"] for p in points], [p["test_loss"] for p in points], "-", lw=1.2, alpha=0.8,
                color=colour[method], label=None if method in labelled else method)
        labelled.add(method)
        growths = [p for p in points if p["point"] == "growth"]
        if growths:
            ax.plot([p["flops"] for p in growths], [p["test_loss"] for p in growths], "o", ms=3, alpha=0.35,
                    color=colour[method])
            marked = True
    if marked:  # one neutral legend entry for the growth marks of every method
        ax.plot([], [], "o", ms=3, alpha=0.5, color="grey", label="growth (right after it)")
    targets = [run["final_test_loss"] for run in record["runs"]
               if run["method"] == "scratch" and run["final_test_loss"] is not None and "scratch" in colour]
    for i, loss in enumerate(targets):
        ax.axhline(loss, color=colour.get("scratch"), ls=":", lw=1, alpha=0.6,
                   label=None if i else "scratch's final loss (each seed)")
    if curves:
        ax.set_xscale("log")
        ax.axvline(record["budget"]["flops"], color="grey", ls="--", lw=1, alpha=0.6, label="the budget (equal FLOPs)")
    ax.set_xlabel("cumulative training FLOPs (every probe included)")
    ax.set_ylabel("test loss")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    _save(fig, path)
