"""report.md as pure text: `render(inputs)` from the records of an experiment directory, and
`render_stack(...)` from those of a stacking directory (`laggrow stack`).

The records are read (and checked) by `report.writer.read_inputs`; this module opens no file
and computes no statistic (those are in correlation.json, made by analysis.correlate). It reuses
the terminal's one-line summaries (`report.tables`). The figures are the ones `laggrow
correlate` draws into OUT/pool/, linked relatively so the report can be moved with its directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow.config import RunConfig
from laggrow.report import tables
from laggrow.report.format import NONE, nats, num, pct, step_label
from laggrow.store import (
    BASE_DIR,
    CORRELATION_FILE,
    CURVES_FILE,
    GROWTH_CURVES_PNG,
    MODELS_DIR,
    POOL_DIR,
    STACK_FILE,
    STACK_PNG,
)


@dataclass(frozen=True)
class ReportInputs:
    """Everything report.md says, as read from the experiment directory."""

    record: dict[str, Any]  # experiment.json
    base: RunConfig
    base_summary: dict[str, Any]  # base/summary.json
    pool_meta: dict[str, Any]  # pool/pool.json
    target: RunConfig  # pool/config.json
    result: dict[str, Any]  # pool/correlation.json
    timings: dict[str, float]  # timings.json, stage -> seconds (report itself left out)
    growth_figure: bool  # pool/curves-growth.png was drawn (the pool has a scratch candidate)


def _table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; `align` has one letter per column, l or r (default: first l, the rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    align = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _seeds(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _rho(row: dict) -> str:
    ci = row["spearman_ci"]
    return num(row["spearman"], ".2f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


# ---- sections -------------------------------------------------------------------------------------

def _base_section(inputs: ReportInputs) -> list[str]:
    cfg, summary = inputs.base, inputs.base_summary
    m, d, t = cfg.model, cfg.data, cfg.train
    rows = [
        ["shape", f"{m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, d_ff {m.d_ff}, "
                  f"{m.pos_emb} positions"],
        ["parameters", f"{summary['params']:,}"],
        ["data", f"{d.corpus}, {d.tokenizer} tokens (vocabulary {m.vocab_size}), sequences of {d.seq_len}"],
        ["training", f"{summary['steps']} steps x batch {t.batch_size} = {summary['tokens']:,} tokens, "
                     f"AdamW lr {t.lr:g}, {t.schedule} schedule"],
        ["held-out loss", f"{summary['final_eval_loss']:.4f} nats/token (unigram entropy of the held-out "
                          f"text: {summary['heldout_unigram_entropy']:.4f})"],
        ["trained in", f"{summary['seconds']:.0f} s ({summary['tokens_per_second']:,.0f} tokens/s)"],
    ]
    return ["## The small model", "", _table(["", ""], rows, align="ll"), ""]


def _pool_section(inputs: ReportInputs) -> list[str]:
    meta, target, result = inputs.pool_meta, inputs.target, inputs.result
    pool, m = meta["pool"], target.model
    base_loss = inputs.base_summary["final_eval_loss"]
    k, final = result["lag_steps"], result["final_step"]
    steps = result["steps"]
    at = {s: steps.index(s) for s in (0, k, final) if s in steps}
    lines = ["## The pool", "",
             f"Every strategy grows the small model to {m.n_layers} layers x d_model {m.d_model} "
             f"({m.n_params():,} parameters). All {len(meta['candidates'])} candidates "
             f"({len(pool['strategies'])} strategies x {_seeds(pool['seeds'])}) train "
             f"together on identical batches (batch {target.train.batch_size}) under one learning-rate "
             f"schedule over T = {final} steps (lr {target.train.lr:g}, {target.train.schedule}, optimizer "
             f"state {pool['optimizer_state']}), so the probe of k = {k} steps is exactly the prefix of the "
             "final run. Loss is the held-out loss in nats/token on the small model's held-out set "
             f"(where the small model ends at {base_loss:.4f}), seeds averaged; ranks are 1 = lowest.", ""]
    header = ["strategy", "preserving", "loss at init", f"loss at k={k}", f"loss at T={final}",
              "rank at init", "rank at k", "rank at T"]
    rows = []
    for s in sorted(result["strategies"], key=lambda s: s["final_loss"]):
        def loss(step: int, s: dict = s) -> str:
            return nats(s["loss"][at[step]]) if step in at else NONE

        def rank(step: int, s: dict = s) -> str:
            return num(s["rank"][at[step]], ".0f") if step in at else NONE

        preserving = {True: "yes", False: "no", None: NONE}[s["function_preserving"]]
        rows.append([f"`{s['strategy']}`", preserving, loss(0), loss(k), loss(final), rank(0), rank(k), rank(final)])
    lines += [_table(header, rows), ""]
    for excluded in result["excluded"]:
        lines.append(f"Left out: `{excluded['strategy']}` seed {excluded['seed']}, {excluded['reason']}.")
    return lines


def _correlation_section(result: dict) -> list[str]:
    rows_by_step = {r["step"]: r for r in result["rows"]}
    k, final = result["lag_steps"], result["final_step"]
    init, at_k = rows_by_step.get(0), rows_by_step.get(k)
    ci = round(100 * result["bootstrap"]["ci_level"])
    lines = ["## Step 0 against step k", ""]
    if init and at_k:
        lines += [f"Spearman rho between each strategy's loss and its loss at T = {final}, "
                  f"with {ci}% bootstrap intervals ({result['bootstrap']['n']} resamples of "
                  f"{result['bootstrap']['resampled']}):", "",
                  _table(["ranked by the loss at", "Spearman rho", "Kendall tau", "top-1", "regret"],
                         [["step 0 (initialisation)", _rho(init), num(init["kendall"], ".2f"),
                           num(init["top1"], ".2f"), nats(init["regret"])],
                          [f"step k = {k} (the probe)", _rho(at_k), num(at_k["kendall"], ".2f"),
                           num(at_k["top1"], ".2f"), nats(at_k["regret"])]]), ""]
    init_line = tables.init_summary(result)
    if init_line:
        lines += [init_line[0].upper() + init_line[1:] + ".", ""]
    lines += ["Every evaluated step (cost: the pool's training compute so far over its final compute; "
              "* from the little lag on):", ""]
    table = []
    for r in result["rows"]:
        # "0 init", "16 lag", "320 final", as in the terminal table
        label = step_label(r["step"], result) + (" *" if r["settled"] else "")
        regret = f"{nats(r['regret'])} ({pct(r['regret_frac'])})" if r["regret"] is not None else NONE
        table.append([label, _rho(r), num(r["kendall"], ".2f"), num(r["top1"], ".2f"), regret,
                      pct(r["compute_fraction"]), ", ".join(f"`{n}`" for n in r["leaders"])])
    lines += [_table(["step", f"rho [{ci}% CI]", "tau", "top-1", "regret (share of spread)", "cost", "leader"],
                     table, align="lrrrrrl"), ""]
    lines += ["![Rank correlation with the final loss against the lag](pool/correlation.png)", ""]
    return lines


def _lag_section(result: dict) -> list[str]:
    rows_by_step = {r["step"]: r for r in result["rows"]}
    k, final = result["lag_steps"], result["final_step"]
    lag = result["little_lag"]
    n = len(result["strategies"])
    lines = ["## The little lag", "", tables.little_lag_summary(result) + ".", ""]
    if lag["step"] is not None:
        # LAG's bill: every candidate for the lag, then the chosen one to T, against training all to T
        share = lag["step"] / final
        lines += [f"Choosing at step {lag['step']} and finishing only the choice costs "
                  f"{n} x {lag['step']} + ({final} - {lag['step']}) = {n * lag['step'] + final - lag['step']} "
                  f"candidate-steps, against {n} x {final} = {n * final} for training every strategy to T "
                  f"({pct((n * lag['step'] + final - lag['step']) / (n * final))}); the lag itself is "
                  f"{pct(share)} of one final run.", ""]
    lines += ["## The pick", ""]
    at_k, at_final = rows_by_step.get(k), rows_by_step.get(final)
    final_loss = {s["strategy"]: s["final_loss"] for s in result["strategies"]}
    if at_k and at_final:
        best = ", ".join(f"`{b}` ({nats(final_loss[b])})" for b in at_final["leaders"])
        picked = ", ".join(f"`{p}` ({nats(final_loss[p])})" for p in at_k["leaders"])
        verdict = "the best final strategy" if set(at_k["leaders"]) <= set(at_final["leaders"]) else \
            f"not the best final one: regret {nats(at_k['regret'])} nats/token " \
            f"({pct(at_k['regret_frac'])} of the spread of final losses; tolerance {nats(lag['regret_tol'])})"
        lines += [f"LAG at k = {k} picks {picked} (final loss in brackets): {verdict}. "
                  f"The best final strategy is {best}."]
        init = rows_by_step.get(0)
        if init:
            lines += ["", f"Choosing at initialisation would pick {', '.join(f'`{p}`' for p in init['leaders'])} "
                          f"(regret {nats(init['regret'])}, probability {num(init['top1'], '.2f')} of "
                          "hitting the best, ties broken at random)."]
        lines.append("")
    return lines


def _predictors_section(result: dict) -> list[str]:
    """The predictors compared (correlation.json's `predictors`) and halving replayed, when present."""
    comparison = result.get("predictors")
    if not comparison:
        return []
    k = comparison["lag_steps"]
    lines = ["## Predictors", "",
             f"Each predictor ranks the strategies from their curves up to a step; rho and regret against the "
             f"loss at T = {comparison['final_step']} (little lag: rho >= {comparison['threshold']:g} and "
             f"regret <= {nats(comparison['regret_tol'])}, {comparison['regret_tol_source']}). "
             f"This report ranks by `{result['predictor']}`.", ""]
    rows = []
    for p in comparison["predictors"]:
        init, at_k = p["at_init"] or {}, p["at_k"] or {}
        rows.append([f"`{p['predictor']}`", p["summary"], num(init.get("spearman"), ".2f"),
                     num(at_k.get("spearman"), ".2f"), num(at_k.get("top1"), ".2f"), nats(at_k.get("regret")),
                     NONE if p["little_lag"] is None else str(p["little_lag"]), pct(p["little_lag_compute"])])
    lines += [_table(["predictor", "what", "rho at 0", f"rho at k = {k}", "top-1 at k", "regret at k",
                      "little lag", "its cost"], rows, align="llrrrrrr"), ""]
    replay = result.get("halving")
    if replay:
        lines += [tables.halving_summary(replay)[0].upper() + tables.halving_summary(replay)[1:] + ".", ""]
    return lines


def _curves_section(inputs: ReportInputs) -> list[str]:
    result = inputs.result
    lines = ["## Loss curves", "", "![Held-out loss of every candidate](pool/curves.png)", ""]
    if inputs.growth_figure:
        lines += ["The same without `scratch`, so that the growth strategies can be told apart:", "",
                  f"![Held-out loss of the grown candidates](pool/{GROWTH_CURVES_PNG})", ""]
    lines += ["![Rank of each strategy by step](pool/ranks.png)", ""]
    spread = [s for s in result["strategies"] if s.get("final_loss_sd") is not None]
    if spread:
        lines += ["Final loss over seeds (mean, sd):", "",
                  _table(["strategy", "seeds", "final loss", "sd"],
                         [[f"`{s['strategy']}`", str(len(s["seeds"])), nats(s["final_loss"]),
                           nats(s["final_loss_sd"])] for s in sorted(spread, key=lambda s: s["final_loss"])]), ""]
    return lines


def _footer(inputs: ReportInputs) -> list[str]:
    record, result = inputs.record, inputs.result
    lines = []
    if result["notes"]:
        lines += ["## Notes", "", *(f"- {note}" for note in result["notes"]), ""]
    if inputs.timings:
        ran = list(inputs.timings.items())
        lines += ["## Time on this machine", "", "Wall-clock seconds of each stage when it last ran "
                  "(compilation and loading the corpus included):", "",
                  _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in ran]
                         + [["total", f"{sum(v for _, v in ran):.0f}"]]), ""]
    lines += [f"Records: `{BASE_DIR}/` (the small model), `{POOL_DIR}/curves.jsonl` (every candidate's "
              f"loss by step), `{POOL_DIR}/probe.json`, `{POOL_DIR}/final.json`, `{POOL_DIR}/{CORRELATION_FILE}` "
              f"and `.csv`. Re-render this file with `laggrow report {record['out_given']}`.", ""]
    return lines


def render(inputs: ReportInputs) -> str:
    """The whole report.md text."""
    record = inputs.record
    name = Path(record["experiment_file"]).name
    lines = [f"# LAG study: {name}", "",
             f"Written by `laggrow run {record['experiment_given']}`: the small model trained, grown with "
             "every strategy of the pool, every candidate probed for k steps and trained to T, and the "
             "ranking at every step compared with the final one (Landscape-Aware Growing, arXiv 2406.02469).",
             ""]
    lines += _base_section(inputs)
    lines += _pool_section(inputs)
    lines += _correlation_section(inputs.result)
    lines += _lag_section(inputs.result)
    lines += _predictors_section(inputs.result)
    lines += _curves_section(inputs)
    lines += _footer(inputs)
    return "\n".join(lines)


# ---- a stacking directory (laggrow stack) ------------------------------------------------------------

def _stack_setup(record: dict) -> list[str]:
    cfg, stack = record["config"]["run"], record["config"]["stack"]
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    stages = record["stages"]
    rows = [
        ["target", f"{m['n_layers']} layers, d_model {m['d_model']}, {m['n_heads']} heads, d_ff {m['d_ff']}"],
        ["data", f"{d['corpus']}, {d['tokenizer']} tokens, sequences of {d['seq_len']}"],
        ["depths", " -> ".join(str(s["depth"]) for s in stages) + f" (blocks of {stack['block']} "
                   f"layer{'s' if stack['block'] != 1 else ''})"],
        ["stages", f"split over each method's budget by PROP-{stack['alpha']:g} (stage i trains in proportion to "
                   f"i^{stack['alpha']:g}), batch {t['batch_size']}, AdamW lr {t['lr']:g}, one {t['schedule']} "
                   f"schedule over each method's steps; optimizer state at a growth: {stack['optimizer_state']}"],
        ["probe", f"K = {stack['probe_steps']} steps of every candidate ({', '.join(stack['candidates'])}) "
                  f"at every growth, scored by `{stack['predictor']}` on the selection set"],
        ["methods", ", ".join(f"`{x}`" for x in record["methods"])],
        ["seeds", ", ".join(map(str, record["seeds"])) + " (init and data order; every method of a seed reads "
                  "the same batches)"],
        ["evaluation", _evaluation_text(record["evaluation"])],
    ]
    lines = ["## What was run", "", _table(["", ""], rows, align="ll"), ""]
    lines += _stack_budget(record)
    lines += ["## Stages", "", f"Adaptive's stages over T = {record['final_steps']} steps (`top` and `middle` "
              "split their own budget the same way, scratch trains the target throughout):", "",
              _table(["stage", "depth", "steps", "global steps"],
                       [[str(s["stage"]), str(s["depth"]), str(s["steps"]), f"{s['start']}-{s['end'] - 1}"]
                        for s in stages]), ""]
    return lines


def _evaluation_text(evaluation: dict) -> str:
    return (f"the held-out documents split in two: a selection set ({evaluation['selection_documents']} documents, "
            f"{evaluation['selection_tokens']:,} tokens) that adaptive's probe chooses on, and a test set "
            f"({evaluation['test_documents']} documents, {evaluation['test_tokens']:,} tokens) that every loss of "
            f"this report is read on; {evaluation['windows']} windows of {evaluation['window_tokens']} tokens each")


def _stack_budget(record: dict) -> list[str]:
    """Every method's steps and FLOPs against the one budget, and what is charged to whom."""
    budget = record["budget"]
    methods = budget["methods"]
    rows = [[f"`{m}`", str(methods[m]["steps"]), num(methods[m]["flops"], ".4g"),
             pct(methods[m]["flops"] / budget["flops"])] for m in record["methods"]]
    return ["## Equal compute", "",
            f"Every method is trained to the same budget of {budget['flops']:.4g} FLOPs ({budget['basis']}): "
            f"`adaptive` over T = {record['final_steps']} steps, `top` and `middle` over the most steps whose own "
            f"stages fit the budget, `scratch` over the most target-depth steps that fit it, so each ends less than "
            f"one target-depth step ({budget['target_step_flops']:.3g} FLOPs) below it and never above.", "",
            _table(["method", "steps", "FLOPs", "of the budget"], rows), "",
            "Adaptive is charged every evaluation its choices read: every candidate on the selection set at every "
            "probe evaluation, the one right after the growth included. The test-set evaluations are measurement "
            "that every method gets at the same points (and adaptive after its probes); they choose nothing and are "
            "charged to no method.", ""]


def _stack_methods(summaries: list[dict], record: dict) -> list[str]:
    windows = record["evaluation"]["windows"]
    rows = [[f"`{s['method']}`", ", ".join(map(str, s["steps"])), str(s["n_seeds"]),
             tables.plus_minus(s["final_loss"], s["final_loss_se"], ".4f"), nats(s["final_loss_window_se"]),
             num(s["total_flops"], ".4g"), num(s["total_tokens"], ",.0f"), tables.gap_text(s), tables.told_apart(s),
             tables.flops_saved_text(s),
             tables.saved_text(s["flops_saved_vs_top"], s["flops_saved_vs_top_seeds"], s["n_seeds"])]
            for s in summaries]
    return ["## Methods, compared at equal FLOPs", "",
            f"Test loss at the end (nats/token), mean ± its standard error over seeds; `window SE`: the test "
            f"set's standard error over its {windows} windows (of the seeds' mean). The gap to the best method ± "
            "the SE of the difference paired by seed, combined with the SE of the difference paired window by "
            "window; `tied`: within 2 of those SEs of the best, so it cannot be told from it. FLOPs and tokens "
            "per run (seeds averaged, probes included). FLOPs saved: the share of a same-budget baseline's FLOPs "
            "a method did not need to reach that baseline's final test loss of the same seed (in brackets: the "
            "seeds that reached it, of all); against scratch, and for adaptive against top as well.", "",
            _table(["method", "steps", "seeds", "final test loss", "window SE", "FLOPs", "tokens", "gap to best",
                      "vs best", "FLOPs saved vs scratch", "vs top"], rows, align="lrrrrrrrlrr"), ""]


def _stack_best(best: dict | None, n_seeds: int) -> list[str]:
    """The methods that cannot be told from the best, and what noise that judgement measured."""
    if best is None:
        return []
    others = [f"`{m}`" for m in best["members"] if m != best["best"]]
    if others:
        verdict = (f"**Cannot be told from the best:** `{best['best']}` (the best) and {', '.join(others)}, within "
                   f"the noise of it")
    else:
        verdict = f"**Best beyond the noise:** `{best['best']}`; no other method is within the noise of it"
    seeds = ("Seeds are paired (every method of a seed shares its init seed and batches) and so are the test "
             f"windows, so a gap counts only well beyond its combined SE; with {n_seeds} seeds that SE is itself "
             "a rough estimate." if best["seed_noise_measured"] else
             "Seed noise is not measured (one seed): the SEs above are the test windows' only, and a gap beyond "
             "them may still be seed noise (growth randomness and data order); run more seeds to measure it.")
    return [f"{verdict} (rule: {best['rule']}).", "", seeds, ""]


def _stack_choices(choices: list[dict]) -> list[str]:
    if not choices:
        return []
    rows = [[str(c["stage"]), str(c["seed"]), str(c["depth"]), f"`{c['chosen']}`", tables.tied_names(c),
             tables.yes_no(c["agrees_top"]), tables.yes_no(c["agrees_middle"]),
             NONE if c["init_choice"] is None else f"`{c['init_choice']}`",
             tables.probe_losses(c["candidates"])] for c in choices]
    agree_top = sum(c["agrees_top"] for c in choices)
    agree_middle = sum(c["agrees_middle"] for c in choices)
    agree_init = sum(c["init_choice"] == c["chosen"] for c in choices)
    tied = sum(bool(c["tied"]) for c in choices)
    n = len(choices)
    return ["## Adaptive's choices", "",
            f"At every growth of every seed, the candidate LAG chose after its probe, on the selection set; the "
            f"candidates tied with it (their score within float rounding, or within 2 paired SEs over the selection "
            f"windows at the probe's end: the probe could not tell them apart, and the first in the candidates' "
            f"order was kept); whether gradual stacking (= top) and MIDAS (= middle) copy the same; what the "
            f"selection loss right after growth would have chosen; and the best candidates by score with their "
            f"selection loss after the probe. Of {n} choices, {tied} had a tie, {agree_top} match top stacking, "
            f"{agree_middle} MIDAS and {agree_init} the choice by the loss right after growth.", "",
            _table(["stage", "seed", "depth", "chosen", "tied with it", "= top", "= middle", "by init loss",
                    "probe (best first)"], rows, align="rrrllllll"), ""]


def render_stack(record: dict, summaries: list[dict], choices: list[dict], best: dict | None) -> str:
    """report.md of a stacking directory, from stack.json and what analysis.stacking computes from
    it (and curves.jsonl): the method summaries, the choices and the best set."""
    lines = ["# Stacking: adaptive gradual stacking against its baselines", "",
             "Written by `laggrow stack`: the model grown in depth stage by stage, `adaptive` choosing the block "
             "to copy at every growth by a short probe of every candidate on a selection set (Landscape-Aware "
             "Growing, arXiv 2406.02469), against always copying the top block (`top`, gradual stacking), always "
             "duplicating the middle block (`middle`, MIDAS) and the full-depth model from scratch (`scratch`), "
             "every method trained to the same FLOPs. Every loss reported is the test set's: held-out documents "
             "that no choice read.", ""]
    lines += _stack_setup(record)
    lines += _stack_methods(summaries, record)
    lines += _stack_best(best, len(record["seeds"]))
    lines += _stack_choices(choices)
    lines += ["## Loss against compute", "",
              f"![Test loss against cumulative FLOPs, every method and seed]({STACK_PNG})", "",
              f"Records: `{STACK_FILE}` (stages, budgets, choices, final losses and their windows, compute), "
              f"`{CURVES_FILE}` (every method's test loss by step), `{MODELS_DIR}/` (each final model, a laggrow "
              "run). Re-render this file with `laggrow report DIR`.", ""]
    return "\n".join(lines)
