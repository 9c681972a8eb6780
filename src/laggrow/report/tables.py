"""Pool results in the terminal: rich tables and one-line summaries.

Nothing here computes a statistic. Tables and figures take the plain dicts of
`CorrelationResult.to_dict()` / `StabilityResult.to_dict()` (what correlation.json holds), so a
report can be re-rendered from the files on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich import box
from rich.table import Table

from laggrow.report.format import NONE, num, pct, step_label


def correlation_table(result: dict) -> Table:
    """One row per evaluated step; step 0 (the view from initialisation) sits in its own section.
    Rows from the little lag on, where the ranking has settled, are marked. Sized for 80 columns:
    top-3, Pearson r and the other intervals are in correlation.json / .csv."""
    ci = round(100 * result["bootstrap"]["ci_level"])
    table = Table(title=f"How early the ranking settles: {len(result['strategies'])} strategies against "
                        f"the loss at step {result['final_step']}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption="top-1, in set: probability that the pick at that step (ties broken at random) is a\n"
                          "final best, and is in the set that cannot be told from the best\n"
                          f"regret: the pick's final loss minus the best (share of {result['little_lag']['spread_of']}"
                          " spread)\ncost: the pool's training compute so far over its final compute\n"
                          "* settled: rho and the pick within bounds from here to the final step",
                  caption_justify="left")
    for name in ("step", f"rho [{ci}% CI]", "tau", "top-1", "in set", "regret", "cost"):
        table.add_column(name, justify="left" if name.startswith("rho") else "right", no_wrap=True)
    for row in result["rows"]:
        interval = row["spearman_ci"]
        rho = num(row["spearman"], ".2f") + (f" [{interval[0]:.2f},{interval[1]:.2f}]" if interval else "")
        regret = f"{num(row['regret'], '.3g')} ({pct(row['regret_frac'])})" if row["regret"] is not None \
            else NONE
        table.add_row(
            step_label(row["step"], result) + (" *" if row["settled"] else ""), rho, num(row["kendall"], ".2f"),
            num(row["top1"], ".2f"), num(row["in_best_set"], ".2f"), regret, pct(row["compute_fraction"]),
            style="green" if row["settled"] else None, end_section=row["step"] == 0)
    return table


def little_lag_summary(result: dict) -> str:
    """The little lag in one sentence, with the rule it was found under."""
    lag, final = result["little_lag"], result["final_step"]
    rule = f"rho >= {lag['threshold']:g} and {lag['rule']}"
    if lag["step"] is None:
        return f"little lag: none before the final step {final}; the ranking has not settled ({rule})"
    cost = NONE if lag["compute_fraction"] is None else f"{100 * lag['compute_fraction']:.3g}%"
    return (f"little lag: step {lag['step']}, costing {cost} of the pool's final training compute "
            f"(by {lag['compute_basis']}); from there to step {final}, {rule}")


def pick_words(row: dict) -> str:
    """A pick in words: who (all tied leaders), and how it fares against the best set."""
    who = " or ".join(row["leaders"])
    if len(row["leaders"]) > 1:
        who += " (tied: one at random)"
    if row["in_best_set"] is None:
        return who
    if row["in_best_set"] == 1:
        verdict = "in the best set"
    elif row["in_best_set"] == 0:
        verdict = "outside the best set"
    else:
        verdict = f"in the best set with probability {row['in_best_set']:.2f}"
    return f"{who}: {verdict}, regret {num(row['regret'], '.3g')}, top-1 {num(row['top1'], '.2f')}"


def init_summary(result: dict) -> str | None:
    """What choosing at initialisation would do: the step-0 line in words."""
    init = result.get("init")
    if not init:
        return None
    preserving = ", ".join(init["function_preserving"]) or "none known"
    return (f"at initialisation (step 0): rho {num(init['spearman'], '.2f')}; the pick: {pick_words(init)}; "
            f"function-preserving: {preserving}")


def best_set_summary(result: dict) -> str:
    """The strategies that cannot be told from the best at T, and by what rule."""
    best = result["best_set"]
    return (f"best at step {result['final_step']}: {best['best']}; cannot be told from it: "
            f"{', '.join(best['members'])} ({best['rule']}; final losses on the {result['noise']['reported_on']} set)")


def best_set_table(result: dict) -> Table:
    """Every strategy's final loss against the best's: the difference with its standard error
    (seeds paired, windows paired) and whether it can be told from the best."""
    best = result["best_set"]
    by_name = {s["strategy"]: s for s in result["strategies"]}
    table = Table(title=f"Final loss against the best ({result['noise']['reported_on']} set)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption=f"SE: of the difference, seeds paired and windows paired; in set: within {best['z']:g} SE",
                  caption_justify="left")
    for name in ("strategy", "seeds", "final loss", "sd", "- best", "SE seeds", "SE windows", "in set"):
        table.add_column(name, justify="left" if name == "strategy" else "right", no_wrap=True)
    for c in best["comparisons"]:
        s = by_name[c["strategy"]]
        table.add_row(c["strategy"], str(len(s["seeds"])), num(c["loss"], ".4f"), num(s["final_loss_sd"], ".4f"),
                      num(c["diff"], "+.4f"), num(c["seed_se"], ".4f"), num(c["eval_se"], ".4f"),
                      "yes" if c["indistinguishable"] else "no", style="green" if c["indistinguishable"] else None)
    return table


def stability_table(result: dict) -> Table:
    """Probe-only pools: how much the ranking moves between successive evaluated steps."""
    table = Table(title=f"Ranking stability up to step {result['last_step']} (no finals yet)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("step", "rho vs previous", "tau vs previous", f"rho vs step {result['last_step']}", "leader"):
        table.add_column(name, justify="left" if name == "leader" else "right")
    for row in result["rows"]:
        leader = ", ".join(row["leaders"]) + (" (changed)" if row["leader_changed"] else "")
        table.add_row(step_label(row["step"], result), num(row["spearman_vs_prev"], ".2f"),
                      num(row["kendall_vs_prev"], ".2f"), num(row["spearman_vs_last"], ".2f"), leader)
    return table


def ranking_table(rows: list[dict[str, Any]], title: str = "Ranking") -> Table:
    """Rows with rank, strategy, function_preserving, eval_loss_init, eval_loss, gap (to the best) and
    optionally diverged, as the probe command prints them."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("rank", "strategy", "function-preserving", "loss at init", "loss", "gap to best"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for row in rows:
        preserving = row.get("function_preserving")
        loss = "diverged" if row.get("diverged") else num(row.get("loss", row.get("eval_loss")), ".4f")
        table.add_row(str(row["rank"]), row["strategy"], NONE if preserving is None else
                      ("yes" if preserving else "no"), num(row.get("eval_loss_init"), ".4f"),
                      loss, num(row.get("gap"), "+.4f"), style="red" if row.get("diverged") else None)
    return table


def predictor_table(comparison: dict) -> Table:
    """Every predictor side by side: rho at initialisation and at k, top-1, the best-set hit and
    regret at k, its little lag and that lag's share of the final compute."""
    k = comparison["lag_steps"]
    table = Table(title=f"Predictors of the loss at step {comparison['final_step']}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption=f"little lag: rho >= {comparison['threshold']:g} and {comparison['rule']} from there on;\n"
                          "cost: its share of the final compute",
                  caption_justify="left")
    for name in ("predictor", "rho@0", f"rho@k={k}", "top-1@k", "set@k", "regret@k", "little lag", "cost"):
        table.add_column(name, justify="left" if name == "predictor" else "right", no_wrap=True)
    for p in comparison["predictors"]:
        init, at_k = p["at_init"] or {}, p["at_k"] or {}
        table.add_row(p["predictor"], num(init.get("spearman"), ".2f"), num(at_k.get("spearman"), ".2f"),
                      num(at_k.get("top1"), ".2f"), num(at_k.get("in_best_set"), ".2f"),
                      num(at_k.get("regret"), ".3g"),
                      NONE if p["little_lag"] is None else str(p["little_lag"]), pct(p["little_lag_compute"]))
    return table


def fallback_notes(comparison: dict, quote: Callable[[str], str] = str) -> list[str]:
    """One sentence per predictor that fell back to another at k (`fell_back_at_k`): its numbers
    there are partly the other predictor's. `quote` writes a predictor's name (report.md: as code)."""
    notes = []
    for p in comparison["predictors"]:
        fell = p.get("fell_back_at_k")
        if fell and fell["fell_back"]:
            why = "; ".join(f"{n}: {reason}" for reason, n in sorted(fell["reasons"].items()))
            notes.append(f"{quote(p['predictor'])} fell back to the window mean for {fell['fell_back']} of "
                         f"{fell['candidates']} candidates at k = {fell['step']} ({why}): its row at k is partly "
                         f"{quote('window')}'s")
    return notes


def halving_summary(replay: dict) -> str:
    """Successive halving replayed on the curves, in one sentence against probing everyone k steps."""
    rounds = "; ".join(f"step {r['steps']}: kept {', '.join(r['kept'])}" for r in replay["rounds"])
    k = replay["probe_everyone_k"]
    against = ""
    if k.get("candidate_steps"):
        where = "" if k.get("in_best_set") is None else f", in the best set with probability {k['in_best_set']:.2f}"
        against = (f"probing everyone k = {k['k']} steps costs {k['candidate_steps']:,} (regret "
                   f"{num(k.get('regret'), '.3g')}{where}); ")
    verdict = "in the best set" if replay.get("in_best_set") else "outside the best set"
    return (f"successive halving (eta {replay['eta']}, first {replay['first']}, predictor {replay['predictor']}) "
            f"picks {replay['winner']} ({verdict}, regret {replay['regret']:.3g}) for {replay['candidate_steps']:,} "
            f"candidate-steps ({pct(replay['fraction_of_train_everyone'])} of training everyone to T); {against}"
            f"rounds: {rounds}")


# ---- stacking (laggrow stack) ---------------------------------------------------------------------

def probe_losses(candidates: list[dict], shown: int = 3) -> str:
    """The best few candidates by score, `name loss` each (the selection loss at the probe's end;
    `diverged` if so), as the terminal and report.md show them."""
    parts = [f"{c['name']} {'diverged' if c['diverged'] else num(c['probe_loss'], '.3f')}"
             for c in candidates[:shown]]
    more = len(candidates) - shown
    return ", ".join(parts) + (f" (+{more})" if more > 0 else "")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def tied_names(row: dict) -> str:
    """The candidates tied with the chosen one (`analysis.stacking.choice_rows`), or `-`."""
    return ", ".join(row["tied"]) or NONE


def stack_choices_table(choice_rows: list[dict]) -> Table:
    """What LAG chose at every growth of every seed (`analysis.stacking.choice_rows`), the
    candidates it could not tell from its choice, what the loss right after growth would have
    picked, whether top stacking and MIDAS would have copied the same, and the best probe losses.
    Sized for 100 columns."""
    table = Table(title="Adaptive: the candidate chosen at every growth (on the selection set)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
                  caption="tied: within float rounding or 2 paired window SEs of the chosen one (first in order "
                          "wins)\nby init: the choice by the selection loss right after growth (no probe)\n"
                          "=top, =mid: gradual stacking, MIDAS copy the same\n"
                          "probe: the best candidates by score, with their selection loss after the probe",
                  caption_justify="left")
    for name in ("stage", "seed", "depth", "chosen", "tied", "by init", "=top", "=mid", "probe"):
        table.add_column(name, justify="right" if name in ("stage", "seed", "depth") else "left",
                         no_wrap=name not in ("probe", "tied"))
    for row in choice_rows:
        table.add_row(str(row["stage"]), str(row["seed"]), str(row["depth"]), row["chosen"], tied_names(row),
                      row["init_choice"] or NONE, yes_no(row["agrees_top"]), yes_no(row["agrees_middle"]),
                      probe_losses(row["candidates"]))
    return table


def plus_minus(value: float | None, se: float | None, spec: str) -> str:
    """`value ± se`, or the value alone without an SE."""
    return num(value, spec) + ("" if se is None or value is None else f" ± {format(se, spec.lstrip('+'))}")


def saved_text(share: float | None, seeds: int | None, n_seeds: int) -> str:
    """`25% (2/2)`: FLOPs saved against a baseline and the seeds that reached its final loss;
    `never (0/2)` when none did; `-` without that baseline (or for the baseline itself)."""
    if seeds is None:
        return NONE
    if share is None:
        return f"never (0/{n_seeds})"
    return f"{pct(share)} ({seeds}/{n_seeds})"


def flops_saved_text(summary: dict) -> str:
    """The FLOPs saved against scratch (`saved_text`)."""
    return saved_text(summary["flops_saved"], summary["flops_saved_seeds"], summary["n_seeds"])


def gap_text(summary: dict) -> str:
    """`best`, or the gap to the best ± its SE (seed and window noise, paired, combined)."""
    return "best" if summary["best"] else plus_minus(summary["gap_to_best"], summary["gap_se"], "+.4f")


def told_apart(summary: dict) -> str:
    """Whether a method can be told from the best: `tied` (within 2 SEs of it), `worse`, or `-`."""
    if summary["best"] or summary["indistinguishable"] is None:
        return NONE
    return "tied" if summary["indistinguishable"] else "worse"


def stack_methods_table(summaries: list[dict]) -> Table:
    """Every method of a stacking run (`analysis.stacking.method_summaries`), all at equal FLOPs:
    final test loss over seeds, compute, the gap to the best (paired SE) and whether it can be told
    from it, and the FLOPs saved against scratch at its final loss. Sized for 80 columns (a
    terminal's, and rich's width off a terminal); report.md adds the steps, tokens and window SEs."""
    table = Table(title="Methods at equal FLOPs: test loss at the end, over seeds", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption="±: SE over seeds (the gap's: paired by seed and by test window, combined)\n"
                          "tied: within 2 SEs of the best, cannot be told from it\n"
                          "FLOPs saved: share of scratch's FLOPs not needed to reach its final loss\n"
                          "(of the seeds, those that reached it)",
                  caption_justify="left")
    for name in ("method", "final loss", "FLOPs", "gap to best", "", "FLOPs saved"):
        table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    for s in summaries:
        table.add_row(s["method"], plus_minus(s["final_loss"], s["final_loss_se"], ".4f"),
                      num(s["total_flops"], ".3g"), gap_text(s), told_apart(s), flops_saved_text(s),
                      style="green" if s["best"] or s["indistinguishable"] else None)
    return table
