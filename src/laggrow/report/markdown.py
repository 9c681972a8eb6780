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
    scratch = sorted({run["steps"] for run in record["runs"] if run["method"] == "scratch"})
    rows = [
        ["target", f"{m['n_layers']} layers, d_model {m['d_model']}, {m['n_heads']} heads, d_ff {m['d_ff']}"],
        ["data", f"{d['corpus']}, {d['tokenizer']} tokens, sequences of {d['seq_len']}"],
        ["depths", " -> ".join(str(s["depth"]) for s in stages) + f" (blocks of {stack['block']} "
                   f"layer{'s' if stack['block'] != 1 else ''})"],
        ["budget", f"T = {record['final_steps']} steps split over the stages by PROP-{stack['alpha']:g} (stage i "
                   f"trains in proportion to i^{stack['alpha']:g}), batch {t['batch_size']}, AdamW lr {t['lr']:g}, "
                   f"one {t['schedule']} schedule over T; optimizer state at a growth: {stack['optimizer_state']}"],
        ["probe", f"K = {stack['probe_steps']} steps of every candidate ({', '.join(stack['candidates'])}) "
                  f"at every growth, scored by `{stack['predictor']}`"],
        ["methods", ", ".join(f"`{x}`" for x in record["methods"])],
        ["seeds", ", ".join(map(str, record["seeds"])) + " (init and data order; every method of a seed reads "
                  "the same batches)"],
    ]
    if scratch:
        rows.append(["scratch", f"the target from scratch for {' / '.join(map(str, scratch))} steps: the FLOPs "
                                "adaptive spends, probes included"])
    lines = ["## What was run", "", _table(["", ""], rows, align="ll"), "", "## Stages", "",
             _table(["stage", "depth", "steps", "global steps"],
                    [[str(s["stage"]), str(s["depth"]), str(s["steps"]), f"{s['start']}-{s['end'] - 1}"]
                     for s in stages]), ""]
    return lines


def _stack_methods(summaries: list[dict]) -> list[str]:
    rows = [[f"`{s['method']}`", str(s["n_seeds"]), tables.plus_minus(s["final_loss"], s["final_loss_se"], ".4f"),
             num(s["total_flops"], ".3g"), num(s["total_tokens"], ",.0f"),
             "best" if s["gap_to_best"] == 0 else tables.plus_minus(s["gap_to_best"], s["gap_se"], "+.4f"),
             tables.flops_saved_text(s)] for s in summaries]
    return ["## Methods", "",
            "Held-out loss at the end (nats/token), mean ± its standard error over seeds; the gap to the best "
            "method ± the SE of the per-seed paired difference; FLOPs and tokens per run (seeds averaged, "
            "probes included); FLOPs saved: the share of scratch's FLOPs a method did not need to reach "
            "scratch's final loss of the same seed (in brackets: the seeds that reached it, of all).", "",
            _table(["method", "seeds", "final loss", "FLOPs", "tokens", "gap to best", "FLOPs saved vs scratch"],
                   rows), ""]


def _stack_choices(choices: list[dict]) -> list[str]:
    if not choices:
        return []
    rows = [[str(c["stage"]), str(c["seed"]), str(c["depth"]), f"`{c['chosen']}`", tables.yes_no(c["agrees_top"]),
             tables.yes_no(c["agrees_middle"]), NONE if c["init_choice"] is None else f"`{c['init_choice']}`",
             tables.probe_losses(c["candidates"])] for c in choices]
    agree_top = sum(c["agrees_top"] for c in choices)
    agree_middle = sum(c["agrees_middle"] for c in choices)
    agree_init = sum(c["init_choice"] == c["chosen"] for c in choices)
    n = len(choices)
    return ["## Adaptive's choices", "",
            f"At every growth of every seed, the candidate LAG chose after its probe; whether gradual stacking "
            f"(= top) and MIDAS (= middle) copy the same; what the loss right after growth would have chosen; and "
            f"the best candidates by score with their probe loss. Of {n} choices, {agree_top} match top stacking, "
            f"{agree_middle} MIDAS and {agree_init} the choice by the loss right after growth.", "",
            _table(["stage", "seed", "depth", "chosen", "= top", "= middle", "by init loss", "probe (best first)"],
                   rows, align="rrrlllll"), ""]


def render_stack(record: dict, summaries: list[dict], choices: list[dict]) -> str:
    """report.md of a stacking directory, from stack.json and the summaries and choices that
    analysis.stacking computes from it (and curves.jsonl)."""
    n_seeds = len(record["seeds"])
    lines = ["# Stacking: adaptive gradual stacking against its baselines", "",
             "Written by `laggrow stack`: the model grown in depth stage by stage, `adaptive` choosing the block "
             "to copy at every growth by a short probe of every candidate (Landscape-Aware Growing, arXiv "
             "2406.02469), against always copying the top block (`top`, gradual stacking), always duplicating "
             "the middle block (`middle`, MIDAS) and the full-depth model from scratch at adaptive's FLOPs "
             "(`scratch`). Every loss is the held-out loss on the same evaluation batches.", ""]
    lines += _stack_setup(record)
    lines += _stack_methods(summaries)
    lines += [f"How to read seed noise: seeds are paired (every method of a seed shares its init seed and "
              f"batches), so a gap to the best is a difference only when it is well beyond its paired SE (say "
              f"twice it), and with {n_seeds} seed{'s' if n_seeds != 1 else ''} that SE is itself "
              f"{'not measured' if n_seeds < 2 else 'a rough estimate'}, so a gap within it is seed noise.", ""]
    lines += _stack_choices(choices)
    lines += ["## Loss against compute", "",
              f"![Held-out loss against cumulative FLOPs, every method and seed]({STACK_PNG})", "",
              f"Records: `{STACK_FILE}` (stages, choices, final losses, compute), `{CURVES_FILE}` (every "
              f"method's loss by step), `{MODELS_DIR}/` (each final model, a laggrow run). Re-render this file "
              "with `laggrow report DIR`.", ""]
    return "\n".join(lines)
