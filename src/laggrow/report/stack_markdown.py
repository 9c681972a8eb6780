"""A stacking directory's report.md as pure text: `render_stack(...)` from the records `laggrow
stack` writes (stack.json, and what analysis.stacking computes from it and curves.jsonl).

This module opens no file and computes no statistic; it reuses the terminal's cells
(`report.tables`). The figure, stack.png, is drawn beside report.md and linked relatively.
An experiment directory's report.md is `report.experiment_markdown`'s.
"""

from __future__ import annotations

from laggrow.report import tables
from laggrow.report.format import NONE, md_table, model_shape, nats, num, pct
from laggrow.store import CURVES_FILE, MODELS_DIR, STACK_FILE, STACK_PNG


def _stack_setup(record: dict) -> list[str]:
    cfg, stack = record["config"]["run"], record["config"]["stack"]
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    stages = record["stages"]
    rows = [
        ["target", model_shape(m)],
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
    if record.get("source"):
        rows.insert(1, ["source", _source_text(record["source"])])
    lines = ["## What was run", "", md_table(["", ""], rows, align="ll"), ""]
    lines += _stack_budget(record)
    lines += ["## Stages", "", f"Adaptive's stages over T = {record['final_steps']} steps (`top` and `middle` "
              "split their own budget the same way, scratch trains the target throughout):", "",
              md_table(["stage", "depth", "steps", "global steps"],
                       [[str(s["stage"]), str(s["depth"]), str(s["steps"]),
                         f"{s['start']}-{s['end'] - 1}" if s["steps"] else "the source, not trained here"]
                        for s in stages]), ""]
    return lines


def _source_text(source: dict) -> str:
    """Where the first stage's model came from, and what its compute and moments are here."""
    origin = (f"imported {source.get('model_type')} model" if source.get("origin") == "import"
              else f"laggrow {source.get('origin')} run")
    return (f"`{source.get('config_path')}`, a {origin} of {source.get('n_layers')} layers (checkpoint "
            f"{source.get('checkpoint_step')}, fingerprint {str(source.get('fingerprint'))[:12]}): adaptive, top "
            f"and middle grow it at step 0, scratch starts from a random target; {source.get('compute')}; "
            f"optimizer: {source.get('optimizer_state', {}).get('what')}")


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
            md_table(["method", "steps", "FLOPs", "of the budget"], rows), "",
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
            md_table(["method", "steps", "seeds", "final test loss", "window SE", "FLOPs", "tokens", "gap to best",
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
    both = best["noise"]
    if both["eval_below_seed_noise"] is not None:
        seeds += (f" The test windows' SE of a gap ({both['eval_se_of_a_difference']:.4f}, median) is "
                  + ("below" if both["eval_below_seed_noise"] else "not below")
                  + f" the seeds' ({both['seed_se_of_a_difference']:.4f})"
                  + (": the held-out set is large enough for these gaps." if both["eval_below_seed_noise"] else
                     ": the held-out set is too small for these gaps (raise data.eval_batches)."))
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
            md_table(["stage", "seed", "depth", "chosen", "tied with it", "= top", "= middle", "by init loss",
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
