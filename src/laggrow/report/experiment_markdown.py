"""An experiment's report.md as pure text: `render(inputs)` from the records of the directory
`laggrow run` writes (the base, each pool, its correlation.json).

The records are read (and checked) by `report.writer.read_inputs`; this module opens no file
and computes no statistic (those are in correlation.json, made by analysis.correlate). It reuses
the terminal's one-line summaries (`report.tables`). The figures are the ones `laggrow
correlate` draws into each pool's directory (OUT/pool/, or OUT/pools/NAME/), linked relatively
so the report can be moved with its directory.

An experiment of one pool (`pool:`) has the pool's sections at the top level, after the small
model's; one of several (`pools:`) has a section per pool, in the experiment file's order, each
holding those same sections one level down, its notes included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow.config import RunConfig
from laggrow.report import tables
from laggrow.report.format import NONE, md_table, model_shape, nats, num, pct, step_label
from laggrow.store import (
    BASE_DIR,
    CORRELATION_FILE,
    CORRELATION_PNG,
    CURVES_FILE,
    CURVES_PNG,
    FINAL_FILE,
    GROWTH_CURVES_PNG,
    PROBE_FILE,
    RANKS_PNG,
)


@dataclass(frozen=True)
class PoolInputs:
    """One pool's records, as read from its directory."""

    name: str | None  # None: the one pool of `pool:`
    directory: str  # relative to the experiment directory, as links spell it: pool, pools/NAME
    meta: dict[str, Any]  # POOL/pool.json
    target: RunConfig  # POOL/config.json
    result: dict[str, Any]  # POOL/correlation.json
    growth_figure: bool  # POOL/curves-growth.png was drawn (the pool has a scratch candidate)


@dataclass(frozen=True)
class ReportInputs:
    """Everything report.md says, as read from the experiment directory."""

    record: dict[str, Any]  # experiment.json
    base: RunConfig
    base_summary: dict[str, Any]  # base/summary.json
    pools: list[PoolInputs]  # one unnamed, or every pool of `pools:` in order
    timings: dict[str, float]  # timings.json, stage -> seconds (report itself left out), in order

    @property
    def named(self) -> bool:
        """An experiment of `pools:` (each pool under its name), not of `pool:`."""
        return self.pools[0].name is not None


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
        ["shape", f"{model_shape(m.to_dict())}, {m.pos_emb} positions"],
        ["parameters", f"{summary['params']:,}"],
        ["data", f"{d.corpus}, {d.tokenizer} tokens (vocabulary {m.vocab_size}), sequences of {d.seq_len}"],
        ["training", f"{summary['steps']} steps x batch {t.batch_size} = {summary['tokens']:,} tokens, "
                     f"AdamW lr {t.lr:g}, {t.schedule} schedule"],
        ["held-out loss", f"{summary['final_eval_loss']:.4f} nats/token (unigram entropy of the held-out "
                          f"text: {summary['heldout_unigram_entropy']:.4f})"],
        ["trained in", f"{summary['seconds']:.0f} s ({summary['tokens_per_second']:,.0f} tokens/s)"],
    ]
    return ["## The small model", "", md_table(["", ""], rows, align="ll"), ""]


def _pool_section(inputs: ReportInputs, entry: PoolInputs) -> list[str]:
    meta, target, result = entry.meta, entry.target, entry.result
    pool, m = meta["pool"], target.model
    base_loss = inputs.base_summary["final_eval_loss"]
    k, final = result["lag_steps"], result["final_step"]
    steps = result["steps"]
    at = {s: steps.index(s) for s in (0, k) if s in steps}
    evaluation = meta.get("evaluation")
    if evaluation:
        sets = (f"Losses before T are on the selection set ({evaluation['selection_documents']} held-out documents, "
                f"{evaluation['selection_windows']} windows of {evaluation['window_tokens']} tokens), which every "
                f"choice reads; the loss at T, and every result below, is on the test set (the other "
                f"{evaluation['test_documents']} held-out documents, {evaluation['test_windows']} windows), read at T "
                "only.")
        if evaluation["overlapping"]:
            sets += (f" The {' and '.join(evaluation['overlapping'])} set's windows overlap (its text is shorter than "
                     "they are together): its standard errors are underestimates; raise data.heldout_fraction.")
    else:
        sets = "Every loss is on the one held-out set these records have (choices and results read the same windows)."
    lines = ["## The pool", "",
             f"Every strategy grows the small model to {m.n_layers} layers x d_model {m.d_model} "
             f"({m.n_params():,} parameters). All {len(meta['candidates'])} candidates "
             f"({len(pool['strategies'])} strategies x {_seeds(pool['seeds'])}) train "
             f"together on identical batches (batch {target.train.batch_size}) under one learning-rate "
             f"schedule over T = {final} steps (lr {target.train.lr:g}, {target.train.schedule}, optimizer "
             f"state {pool['optimizer_state']}), so the probe of k = {k} steps is exactly the prefix of the "
             f"final run. Losses are in nats/token (the small model ends at {base_loss:.4f} on the whole held-out "
             f"set), seeds averaged; ranks are 1 = lowest, strategies tied within what the evaluation resolves "
             f"sharing a rank. {sets}", ""]
    header = ["strategy", "preserving", "loss at init", f"loss at k={k}", f"loss at T={final}",
              "rank at init", "rank at k", "rank at T", "in best set"]
    rows = []
    for s in sorted(result["strategies"], key=lambda s: s["final_loss"]):
        def loss(step: int, s: dict = s) -> str:
            return nats(s["loss"][at[step]]) if step in at else NONE

        def rank(step: int, s: dict = s) -> str:
            return num(s["rank"][at[step]], ".0f") if step in at else NONE

        preserving = {True: "yes", False: "no", None: NONE}[s["function_preserving"]]
        rows.append([f"`{s['strategy']}`", preserving, loss(0), loss(k), nats(s["final_loss"]), rank(0), rank(k),
                     num(s["final_rank"], ".0f"), tables.yes_no(s["in_best_set"])])
    lines += [md_table(header, rows), ""]
    for excluded in result["excluded"]:
        lines.append(f"Left out: `{excluded['strategy']}` seed {excluded['seed']}, {excluded['reason']}.")
    return lines


def _noise_section(result: dict) -> list[str]:
    """The best set, and the two noises of a final difference side by side."""
    best, summary = result["best_set"], result["noise"]
    members = ", ".join(f"`{m}`" for m in best["members"])
    lines = ["## What can be told apart", "",
             f"The best at T = {result['final_step']} is `{best['best']}`; it cannot be told from {members} "
             f"({best['rule']}). A pick is judged by whether it lands in this set.", ""]
    rows = [[f"`{c['strategy']}`", nats(c["loss"]), num(c["diff"], "+.4f"), num(c["seed_se"], ".4f"),
             num(c["eval_se"], ".4f"), tables.yes_no(c["indistinguishable"])] for c in best["comparisons"]]
    lines += [md_table(["strategy", "final loss", "- best", "SE over seeds", "SE over windows", "in the set"], rows),
              ""]
    parts = []
    if summary["eval_se_of_a_loss"] is not None:
        parts.append(f"one final loss has a standard error of {summary['eval_se_of_a_loss']:.4f} over the "
                     f"{summary['windows']} test windows; a difference of two, paired by window, "
                     f"{num(summary['eval_se_of_a_difference'], '.4f')} (median)")
    if summary["seed_se_of_a_difference"] is not None:
        parts.append(f"paired by seed ({summary['seeds']} seeds), a difference has a standard error of "
                     f"{summary['seed_se_of_a_difference']:.4f} (median)")
    else:
        parts.append("with one seed per strategy the seed noise is not measured")
    if summary["eval_below_seed_noise"] is not None:
        parts.append("the held-out set is large enough: its noise is below the seeds'"
                     if summary["eval_below_seed_noise"] else
                     "the held-out set is too small: its noise is not below the seeds' (raise data.eval_batches)")
    lines += ["Noise: " + "; ".join(parts) + ".", ""]
    return lines


def _correlation_section(result: dict, directory: str) -> list[str]:
    rows_by_step = {r["step"]: r for r in result["rows"]}
    k, final = result["lag_steps"], result["final_step"]
    init, at_k = rows_by_step.get(0), rows_by_step.get(k)
    ci = round(100 * result["bootstrap"]["ci_level"])
    lines = ["## Step 0 against step k", ""]
    if init and at_k:
        lines += [f"Spearman rho between each strategy's loss and its loss at T = {final}, "
                  f"with {ci}% bootstrap intervals ({result['bootstrap']['n']} resamples of "
                  f"{result['bootstrap']['resampled']}); top-1 and in-set: the probability that the pick "
                  "(ties broken at random) is a final best, and lands in the best set:", "",
                  md_table(["ranked by the loss at", "Spearman rho", "Kendall tau", "top-1", "in set", "regret"],
                           [["step 0 (initialisation)", _rho(init), num(init["kendall"], ".2f"),
                             num(init["top1"], ".2f"), num(init["in_best_set"], ".2f"), nats(init["regret"])],
                            [f"step k = {k} (the probe)", _rho(at_k), num(at_k["kendall"], ".2f"),
                             num(at_k["top1"], ".2f"), num(at_k["in_best_set"], ".2f"), nats(at_k["regret"])]]),
                  ""]
    init_line = tables.init_summary(result)
    if init_line:
        lines += [init_line[0].upper() + init_line[1:] + ".", ""]
    lines += [f"Every evaluated step (regret: its share of {result['little_lag']['spread_of']} spread of final "
              "losses; cost: the pool's training compute so far over its final compute; * from the little lag on):",
              ""]
    table = []
    for r in result["rows"]:
        # "0 init", "16 lag", "320 final", as in the terminal table
        label = step_label(r["step"], result) + (" *" if r["settled"] else "")
        regret = f"{nats(r['regret'])} ({pct(r['regret_frac'])})" if r["regret"] is not None else NONE
        table.append([label, _rho(r), num(r["kendall"], ".2f"), num(r["top1"], ".2f"), num(r["in_best_set"], ".2f"),
                      regret, pct(r["compute_fraction"]), ", ".join(f"`{n}`" for n in r["leaders"])])
    lines += [md_table(["step", f"rho [{ci}% CI]", "tau", "top-1", "in set", "regret (share of spread)", "cost",
                        "pick"], table, align="lrrrrrrl"), ""]
    lines += [f"![Rank correlation with the final loss against the lag]({directory}/{CORRELATION_PNG})", ""]
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
    at_k = rows_by_step.get(k)
    final_loss = {s["strategy"]: s["final_loss"] for s in result["strategies"]}
    if at_k:
        picked = ", ".join(f"`{p}` ({nats(final_loss[p])})" for p in at_k["leaders"])
        best = result["best_set"]["best"]
        lines += [f"LAG at k = {k} picks {picked} (final loss in brackets): {tables.pick_words(at_k)}. "
                  f"The best final strategy is `{best}` ({nats(final_loss[best])})."]
        init = rows_by_step.get(0)
        if init:
            lines += ["", f"Choosing at initialisation would pick {tables.pick_words(init)}."]
        lines.append("")
    return lines


def _predictors_section(result: dict) -> list[str]:
    """The predictors compared (correlation.json's `predictors`) and halving replayed, when present."""
    comparison = result.get("predictors")
    if not comparison:
        return []
    k = comparison["lag_steps"]
    lines = ["## Predictors", "",
             f"Each predictor ranks the strategies from their selection-set curves up to a step; rho, the pick's "
             f"best-set hit and regret against the loss at T = {comparison['final_step']} (little lag: rho >= "
             f"{comparison['threshold']:g} and {comparison['rule']}). This report ranks by `{result['predictor']}`.",
             ""]
    rows = []
    for p in comparison["predictors"]:
        init, at_k = p["at_init"] or {}, p["at_k"] or {}
        rows.append([f"`{p['predictor']}`", p["summary"], num(init.get("spearman"), ".2f"),
                     num(at_k.get("spearman"), ".2f"), num(at_k.get("top1"), ".2f"),
                     num(at_k.get("in_best_set"), ".2f"), nats(at_k.get("regret")),
                     NONE if p["little_lag"] is None else str(p["little_lag"]), pct(p["little_lag_compute"])])
    lines += [md_table(["predictor", "what", "rho at 0", f"rho at k = {k}", "top-1 at k", "in set at k",
                        "regret at k", "little lag", "its cost"], rows, align="llrrrrrrr"), ""]
    for note in tables.fallback_notes(comparison, quote=lambda name: f"`{name}`"):
        lines += [note + ".", ""]
    replay = result.get("halving")
    if replay:
        lines += [tables.halving_summary(replay)[0].upper() + tables.halving_summary(replay)[1:] + ".", ""]
    return lines


def _curves_section(entry: PoolInputs) -> list[str]:
    directory = entry.directory
    lines = ["## Loss curves", "", f"![Held-out loss of every candidate]({directory}/{CURVES_PNG})", ""]
    if entry.growth_figure:
        lines += ["The same without `scratch`, so that the growth strategies can be told apart:", "",
                  f"![Held-out loss of the grown candidates]({directory}/{GROWTH_CURVES_PNG})", ""]
    lines += [f"![Rank of each strategy by step]({directory}/{RANKS_PNG})", ""]
    return lines


def _notes_section(result: dict) -> list[str]:
    return ["## Notes", "", *(f"- {note}" for note in result["notes"]), ""] if result["notes"] else []


def _pool_sections(inputs: ReportInputs, entry: PoolInputs) -> list[str]:
    """Everything about one pool: its table, what can be told apart, the correlation by step, the
    little lag and LAG's pick, the predictors, its curves."""
    return (_pool_section(inputs, entry) + _noise_section(entry.result)
            + _correlation_section(entry.result, entry.directory) + _lag_section(entry.result)
            + _predictors_section(entry.result) + _curves_section(entry))


def _named_pool_section(inputs: ReportInputs, entry: PoolInputs) -> list[str]:
    """A pool of several: a heading naming it, its sections one level down, its notes."""
    m = entry.target.model
    lines = [f"## Pool `{entry.name}`: {m.n_layers} layers x d_model {m.d_model}", "",
             f"Records in `{entry.directory}/`.", ""]
    for line in _pool_sections(inputs, entry) + _notes_section(entry.result):
        lines.append("#" + line if line.startswith("## ") else line)
    return lines


def _footer(inputs: ReportInputs) -> list[str]:
    record = inputs.record
    lines = []
    if not inputs.named:  # a named pool's are in its own section
        lines += _notes_section(inputs.pools[0].result)
    if inputs.timings:
        ran = list(inputs.timings.items())
        lines += ["## Time on this machine", "", "Wall-clock seconds of each stage when it last ran "
                  "(compilation and loading the corpus included):", "",
                  md_table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in ran]
                         + [["total", f"{sum(v for _, v in ran):.0f}"]]), ""]
    where = ", ".join(f"`{p.directory}/`" for p in inputs.pools)
    pool_dir = inputs.pools[0].directory if len(inputs.pools) == 1 else "POOL"
    lines += [f"Records: `{BASE_DIR}/` (the small model), "
              + ("" if len(inputs.pools) == 1 else f"each pool's directory POOL ({where}): ")
              + f"`{pool_dir}/{CURVES_FILE}` (every candidate's "
              f"loss by step), `{pool_dir}/{PROBE_FILE}`, `{pool_dir}/{FINAL_FILE}`, `{pool_dir}/{CORRELATION_FILE}` "
              f"and `.csv`. Re-render this file with `laggrow report {record['out_given']}`.", ""]
    return lines


def render(inputs: ReportInputs) -> str:
    """The whole report.md text."""
    record = inputs.record
    name = Path(record["experiment_file"]).name
    lines = [f"# LAG study: {name}", "",
             f"Written by `laggrow run {record['experiment_given']}`: the small model trained, grown with "
             f"every strategy of {'each pool' if inputs.named else 'the pool'}, every candidate probed for k "
             "steps and trained to T, and the ranking at every step compared with the final one (Landscape-Aware "
             "Growing, arXiv 2406.02469).",
             ""]
    lines += _base_section(inputs)
    if inputs.named:
        for entry in inputs.pools:
            lines += _named_pool_section(inputs, entry)
    else:
        lines += _pool_sections(inputs, inputs.pools[0])
    lines += _footer(inputs)
    return "\n".join(lines)
