"""report.md of an experiment directory, rendered from the records on disk alone.

Reads OUT/experiment.json, OUT/base/{config,summary}.json, OUT/pool/{pool,config,probe,final,
correlation}.json and OUT/timings.json; computes no statistic (those are in correlation.json, made by
analysis.correlate) and reuses report.py's one-line summaries. The figures are the ones `laggrow
correlate` draws into OUT/pool/, linked relatively so the report can be moved with its directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from laggrow import report, runs
from laggrow.errors import LaggrowError
from laggrow.experiment import (
    BASE_DIR,
    CORRELATION_FILE,
    POOL_DIR,
    REPORT_FILE,
    STAGES,
    TIMINGS_FILE,
    read_experiment_dir,
)

GROWTH_CURVES = "curves-growth.png"


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise LaggrowError(f"{path}: not found (expected the {what} written by laggrow run; run it first)")
    return json.loads(path.read_text(encoding="utf-8"))


def _num(value: float | None, spec: str = ".4f") -> str:
    return report.NONE if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return report.NONE if value is None else f"{100 * value:.3g}%"


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
    return _num(row["spearman"], ".2f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


# ---- sections -------------------------------------------------------------------------------------

def _base_section(out: Path) -> list[str]:
    cfg = runs.read_run_config(out / BASE_DIR, what="base run")
    summary = _read(out / BASE_DIR / runs.SUMMARY_FILE, "base run's summary")
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


def _pool_section(out: Path, result: dict) -> list[str]:
    meta = _read(out / POOL_DIR / "pool.json", "pool record")
    target = runs.read_run_config(out / POOL_DIR, what="grown model")
    pool, m = meta["pool"], target.model
    base_loss = _read(out / BASE_DIR / runs.SUMMARY_FILE, "base run's summary")["final_eval_loss"]
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
            return _num(s["loss"][at[step]]) if step in at else report.NONE

        def rank(step: int, s: dict = s) -> str:
            return _num(s["rank"][at[step]], ".0f") if step in at else report.NONE

        preserving = {True: "yes", False: "no", None: report.NONE}[s["function_preserving"]]
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
                         [["step 0 (initialisation)", _rho(init), _num(init["kendall"], ".2f"),
                           _num(init["top1"], ".2f"), _num(init["regret"])],
                          [f"step k = {k} (the probe)", _rho(at_k), _num(at_k["kendall"], ".2f"),
                           _num(at_k["top1"], ".2f"), _num(at_k["regret"])]]), ""]
    init_line = report.init_summary(result)
    if init_line:
        lines += [init_line[0].upper() + init_line[1:] + ".", ""]
    lines += ["Every evaluated step (cost: the pool's training compute so far over its final compute; "
              "* from the little lag on):", ""]
    table = []
    for r in result["rows"]:
        # "0 init", "16 lag", "320 final", as in the terminal table
        label = report._step_label(r["step"], result) + (" *" if r["settled"] else "")
        regret = f"{_num(r['regret'])} ({_pct(r['regret_frac'])})" if r["regret"] is not None else report.NONE
        table.append([label, _rho(r), _num(r["kendall"], ".2f"), _num(r["top1"], ".2f"), regret,
                      _pct(r["compute_fraction"]), ", ".join(f"`{n}`" for n in r["leaders"])])
    lines += [_table(["step", f"rho [{ci}% CI]", "tau", "top-1", "regret (share of spread)", "cost", "leader"],
                     table, align="lrrrrrl"), ""]
    lines += ["![Rank correlation with the final loss against the lag](pool/correlation.png)", ""]
    return lines


def _lag_section(out: Path, result: dict) -> list[str]:
    rows_by_step = {r["step"]: r for r in result["rows"]}
    k, final = result["lag_steps"], result["final_step"]
    lag = result["little_lag"]
    n = len(result["strategies"])
    lines = ["## The little lag", "", report.little_lag_summary(result) + ".", ""]
    if lag["step"] is not None:
        # LAG's bill: every candidate for the lag, then the chosen one to T, against training all to T
        share = lag["step"] / final
        lines += [f"Choosing at step {lag['step']} and finishing only the choice costs "
                  f"{n} x {lag['step']} + ({final} - {lag['step']}) = {n * lag['step'] + final - lag['step']} "
                  f"candidate-steps, against {n} x {final} = {n * final} for training every strategy to T "
                  f"({_pct((n * lag['step'] + final - lag['step']) / (n * final))}); the lag itself is "
                  f"{_pct(share)} of one final run.", ""]
    lines += ["## The pick", ""]
    at_k, at_final = rows_by_step.get(k), rows_by_step.get(final)
    final_loss = {s["strategy"]: s["final_loss"] for s in result["strategies"]}
    if at_k and at_final:
        best = ", ".join(f"`{b}` ({_num(final_loss[b])})" for b in at_final["leaders"])
        picked = ", ".join(f"`{p}` ({_num(final_loss[p])})" for p in at_k["leaders"])
        verdict = "the best final strategy" if set(at_k["leaders"]) <= set(at_final["leaders"]) else \
            f"not the best final one: regret {_num(at_k['regret'])} nats/token " \
            f"({_pct(at_k['regret_frac'])} of the spread of final losses; tolerance {_num(lag['regret_tol'])})"
        lines += [f"LAG at k = {k} picks {picked} (final loss in brackets): {verdict}. "
                  f"The best final strategy is {best}."]
        init = rows_by_step.get(0)
        if init:
            lines += ["", f"Choosing at initialisation would pick {', '.join(f'`{p}`' for p in init['leaders'])} "
                          f"(regret {_num(init['regret'])}, probability {_num(init['top1'], '.2f')} of "
                          "hitting the best, ties broken at random)."]
        lines.append("")
    return lines


def _plot_growth_curves(out: Path, result: dict) -> bool:
    """curves.png again without `scratch`, whose loss sets the y-range of the full figure and
    flattens the growth strategies into one line; drawn by report.plot_curves. False if no scratch."""
    from laggrow.curves import load_curves

    curves = load_curves(out / POOL_DIR)
    keep = [i for i, c in enumerate(curves.candidates) if c.strategy != "scratch"]
    if len(keep) == len(curves.candidates) or not keep:
        return False
    grown = dataclasses.replace(curves, candidates=[curves.candidates[i] for i in keep], loss=curves.loss[keep],
                                flops=curves.flops[keep], tokens=curves.tokens[keep])
    path = out / POOL_DIR / GROWTH_CURVES
    tmp = path.with_name(f".{path.name}.tmp")
    report.plot_curves(grown, tmp, last_step=result["final_step"])
    tmp.replace(path)
    return True


def _curves_section(out: Path, result: dict) -> list[str]:
    lines = ["## Loss curves", "", "![Held-out loss of every candidate](pool/curves.png)", ""]
    if _plot_growth_curves(out, result):
        lines += ["The same without `scratch`, so that the growth strategies can be told apart:", "",
                  f"![Held-out loss of the grown candidates](pool/{GROWTH_CURVES})", ""]
    lines += ["![Rank of each strategy by step](pool/ranks.png)", ""]
    spread = [s for s in result["strategies"] if s.get("final_loss_sd") is not None]
    if spread:
        lines += ["Final loss over seeds (mean, sd):", "",
                  _table(["strategy", "seeds", "final loss", "sd"],
                         [[f"`{s['strategy']}`", str(len(s["seeds"])), _num(s["final_loss"]),
                           _num(s["final_loss_sd"])] for s in sorted(spread, key=lambda s: s["final_loss"])]), ""]
    return lines


def _footer(out: Path, record: dict, result: dict) -> list[str]:
    lines = []
    if result["notes"]:
        lines += ["## Notes", "", *(f"- {note}" for note in result["notes"]), ""]
    timings_file = out / TIMINGS_FILE
    if timings_file.is_file():
        timings = json.loads(timings_file.read_text(encoding="utf-8"))
        # the report's own time is not known while it is being written, so it is left out
        ran = [(stage, timings[stage]) for stage in STAGES if stage in timings and stage != "report"]
        lines += ["## Time on this machine", "", "Wall-clock seconds of each stage when it last ran "
                  "(compilation and loading the corpus included):", "",
                  _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in ran]
                         + [["total", f"{sum(v for _, v in ran):.0f}"]]), ""]
    lines += [f"Records: `{BASE_DIR}/` (the small model), `{POOL_DIR}/curves.jsonl` (every candidate's "
              f"loss by step), `{POOL_DIR}/probe.json`, `{POOL_DIR}/final.json`, `{POOL_DIR}/{CORRELATION_FILE}` "
              f"and `.csv`. Re-render this file with `laggrow report {record['out_given']}`.", ""]
    return lines


def render(out: Path) -> str:
    """The whole report.md text of the experiment directory `out` (and its one figure of its own,
    curves-growth.png)."""
    out = Path(out)
    record = read_experiment_dir(out)
    result = _read(out / POOL_DIR / CORRELATION_FILE, "correlation")
    name = Path(record["experiment_file"]).name
    lines = [f"# LAG study: {name}", "",
             f"Written by `laggrow run {record['experiment_given']}`: the small model trained, grown with "
             "every strategy of the pool, every candidate probed for k steps and trained to T, and the "
             "ranking at every step compared with the final one (Landscape-Aware Growing, arXiv 2406.02469).",
             ""]
    lines += _base_section(out)
    lines += _pool_section(out, result)
    lines += _correlation_section(result)
    lines += _lag_section(out, result)
    lines += _curves_section(out, result)
    lines += _footer(out, record, result)
    return "\n".join(lines)


def write_report(out: Path) -> Path:
    """Render and write OUT/report.md atomically; returns its path."""
    text = render(out)
    path = Path(out) / REPORT_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
