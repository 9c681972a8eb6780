"""The study's tables, from the directories study/run.py and study/stack.py trained.

    .venv/bin/python study/tables.py [--out runs/study] > docs/study-tables.md

Per corpus: the base and the held-out split; per protocol, the pick at k against the set that
cannot be told from the best at T (ties, seed noise and evaluation noise as laggrow.analysis takes
them), the little lag and the best final loss; the protocols against the study's previous default
on final quality, paired by seed; every predictor and successive halving replayed; every
strategy's final loss; and the stacking comparison at equal FLOPs. All numbers come from
laggrow.analysis over the recorded files; nothing is trained here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from laggrow import analysis, store
from laggrow.analysis import noise
from laggrow.analysis.stacking import best_methods, choice_rows, method_summaries
from laggrow.errors import LaggrowError
from laggrow.report.writer import read_stack_record, read_stack_rows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "study"))
from run import CORPORA, PROTOCOLS  # noqa: E402

REFERENCE = "carry-peak"  # the default protocol before this study: what the others are paired against
HALVING_FIRST = (4, 8)


def fmt(value, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def ticks(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


class Pool:
    """One finished pool: its curves, the correlation by the loss and every predictor compared."""

    def __init__(self, directory: Path):
        self.curves = analysis.load_curves(directory)
        self.result = analysis.correlate(self.curves, n_boot=1000, seed=0)
        self.comparison = analysis.compare_predictors(self.curves)
        self.k = self.result.lag_steps
        self.at_k = self.result.rows[self.result.steps.index(self.k)]
        self.init = self.result.rows[0]
        self.by_name = {s["strategy"]: s for s in self.result.strategies}
        self.best = self.result.best_set["best"]

    def final_by_seed(self, strategy: str) -> dict[int, float]:
        return {int(s): v for s, v in self.by_name[strategy]["final_loss_by_seed"].items()}

    def final_windows(self, strategy: str) -> np.ndarray | None:
        """(seeds, windows) test-set losses of the strategy at T."""
        if self.curves.test_windows is None:
            return None
        rows = [i for i, c in enumerate(self.curves.candidates) if c.strategy == strategy]
        last = int(np.searchsorted(self.curves.steps, self.result.final_step))
        return self.curves.test_windows[rows, last]


def pick(row) -> str:
    verdict = {1.0: "in", 0.0: "out"}.get(row.in_best_set, f"{row.in_best_set:.2f}")
    return f"{ticks(row.leaders)} ({verdict})"


def base_rows(out: Path) -> list[list[str]]:
    rows = []
    for corpus in CORPORA:
        base = out / corpus / "base"
        if not (base / store.SUMMARY_FILE).is_file():
            continue
        summary = store.read_json(base / store.SUMMARY_FILE, "summary")
        data = store.read_json(base / store.DATA_FILE, "data record")
        pools = [out / corpus / p for p in PROTOCOLS if (out / corpus / p / store.POOL_FILE).is_file()]
        split = store.read_json(pools[0] / store.POOL_FILE, "pool record")["evaluation"] if pools else {}
        rows.append([corpus, f"{data['train_tokens']:,}", f"{data['heldout_tokens']:,}",
                     f"{split.get('selection_documents', '–')} / {split.get('test_documents', '–')}",
                     f"{split.get('selection_windows', '–')} / {split.get('test_windows', '–')}",
                     ", ".join(split.get("overlapping", [])) or "none",
                     f"{summary['final_eval_loss']:.4f}", f"{summary['heldout_unigram_entropy']:.4f}"])
    return rows


def protocol_rows(pools: dict) -> list[list[str]]:
    rows = []
    for (corpus, protocol), p in pools.items():
        if p is None:
            rows.append([corpus, protocol, "not run", *[""] * 10])
            continue
        r, lag = p.result, p.result.little_lag
        ci = f" [{p.at_k.spearman_ci[0]:.2f}, {p.at_k.spearman_ci[1]:.2f}]" if p.at_k.spearman_ci else ""
        rows.append([corpus, protocol, f"`{p.best}` {p.by_name[p.best]['final_loss']:.4f}",
                     ticks(r.best_set["members"]),
                     fmt(p.init.spearman, ".2f"), fmt(p.at_k.spearman, ".2f") + ci, pick(p.at_k),
                     fmt(p.at_k.top1, ".2f"), fmt(p.at_k.regret), pick(p.init),
                     "none" if lag["step"] is None else f"{lag['step']} ({pct(lag['compute_fraction'])})",
                     fmt(r.noise["seed_se_of_a_difference"]), fmt(r.noise["eval_se_of_a_difference"])])
    return rows


def against_reference(pools: dict) -> list[list[str]]:
    """Each protocol's best final loss against the reference protocol's, paired by seed (the same
    seeds read the same batches and grow with the same keys in every protocol) and by test window
    (the same windows): the mean difference and its SE."""
    rows = []
    for corpus in CORPORA:
        ref = pools.get((corpus, REFERENCE))
        if ref is None:
            continue
        ref_final, ref_windows = ref.final_by_seed(ref.best), ref.final_windows(ref.best)
        for protocol in PROTOCOLS:
            p = pools.get((corpus, protocol))
            if p is None or protocol == REFERENCE:
                continue
            final, windows = p.final_by_seed(p.best), p.final_windows(p.best)
            diff = float(np.mean([final[s] - ref_final[s] for s in final if s in ref_final]))
            seed_se = noise.paired_seed_se(final, ref_final)
            eval_se = None if windows is None or ref_windows is None else noise.paired_window_se(windows, ref_windows)
            se = noise.combined_se(seed_se, eval_se)
            per_seed = ", ".join(f"{final[s] - ref_final[s]:+.4f}" for s in sorted(final) if s in ref_final)
            verdict = "–" if se is None else ("better" if diff < -noise.Z * se else
                                               "worse" if diff > noise.Z * se else "cannot be told apart")
            rows.append([corpus, protocol, f"`{p.best}` vs `{ref.best}`", f"{diff:+.4f}", per_seed, fmt(seed_se),
                         fmt(eval_se), verdict])
    return rows


def predictor_rows(pools: dict) -> list[list[str]]:
    rows = []
    for (corpus, protocol), p in pools.items():
        if p is None:
            continue
        for q in p.comparison["predictors"]:
            at_k, at_0 = q["at_k"] or {}, q["at_init"] or {}
            rows.append([corpus, protocol, f"`{q['predictor']}`", fmt(at_0.get("spearman"), ".2f"),
                         fmt(at_k.get("spearman"), ".2f"), fmt(at_k.get("top1"), ".2f"),
                         fmt(at_k.get("in_best_set"), ".2f"), fmt(at_k.get("regret")),
                         "none" if q["little_lag"] is None else f"{q['little_lag']} ({pct(q['little_lag_compute'])})"])
    return rows


def halving_rows(pools: dict) -> list[list[str]]:
    rows = []
    for (corpus, protocol), p in pools.items():
        if p is None:
            continue
        for first in HALVING_FIRST:
            try:
                h = analysis.replay_halving(p.curves, eta=2, first=first)
            except LaggrowError as err:
                rows.append([corpus, protocol, str(first), str(err), "", "", "", ""])
                continue
            lag = h["probe_everyone_k"]
            rows.append([corpus, protocol, str(first), " → ".join(str(r["steps"]) for r in h["rounds"]),
                         f"`{h['winner']}` ({'in' if h['in_best_set'] else 'out'})", fmt(h["regret"]),
                         f"{h['candidate_steps']:,} ({pct(h['fraction_of_train_everyone'])})",
                         f"{fmt(lag.get('regret'))} for {lag['candidate_steps']:,} "
                         f"({pct(lag['candidate_steps'] / h['train_everyone']['candidate_steps'])})"])
    return rows


def strategy_rows(pools: dict) -> list[list[str]]:
    rows = []
    for (corpus, protocol), p in pools.items():
        if p is None:
            continue
        ranked = sorted(p.result.strategies, key=lambda s: s["final_loss"])
        rows.append([corpus, protocol, ", ".join(
            f"`{s['strategy']}` {s['final_loss']:.4f}±{fmt(s['final_loss_sd'])}{'' if s['in_best_set'] else ' (out)'}"
            for s in ranked)])
    return rows


def stack_rows(out: Path) -> tuple[list[list[str]], list[list[str]]]:
    methods, choices = [], []
    for corpus in CORPORA:
        directory = out / f"stack-{corpus}"
        if not (directory / store.STACK_FILE).is_file():
            methods.append([corpus, "not run", *[""] * 9])
            continue
        record = read_stack_record(directory)  # checked, and of today's format (formats.migrate)
        rows = read_stack_rows(directory, record)
        best = best_methods(record)
        for s in method_summaries(record, rows):
            gap = "best" if s["best"] else f"{s['gap_to_best']:+.4f} ± {fmt(s['gap_se'])}"
            told = "–" if s["best"] else ("tied" if s["indistinguishable"] else "worse")
            saved = "–" if s["flops_saved_seeds"] is None else (
                f"never (0/{s['n_seeds']})" if s["flops_saved"] is None
                else f"{pct(s['flops_saved'])} ({s['flops_saved_seeds']}/{s['n_seeds']})")
            methods.append([corpus, f"`{s['method']}`", "/".join(map(str, s["steps"])),
                            f"{s['final_loss']:.4f} ± {fmt(s['final_loss_se'])}", fmt(s["final_loss_window_se"]),
                            f"{s['total_flops']:.3g}", gap, told, saved,
                            "–" if s["flops_saved_vs_top_seeds"] is None else
                            f"{pct(s['flops_saved_vs_top'])} ({s['flops_saved_vs_top_seeds']}/{s['n_seeds']})",
                            fmt(best["noise"]["eval_se_of_a_difference"]) + " / "
                            + fmt(best["noise"]["seed_se_of_a_difference"])])
        rows_ = choice_rows(record)
        if rows_:
            n = len(rows_)
            choices.append([corpus, str(n), str(sum(r["agrees_top"] for r in rows_)),
                            str(sum(r["agrees_middle"] for r in rows_)),
                            str(sum(r["init_choice"] == r["chosen"] for r in rows_)),
                            str(sum(bool(r["tied"]) for r in rows_))])
    return methods, choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    args = parser.parse_args()
    pools = {}
    for protocol in PROTOCOLS:
        for corpus in CORPORA:
            directory = args.out / corpus / protocol
            pools[(corpus, protocol)] = Pool(directory) if (directory / store.FINAL_FILE).is_file() else None
    pools = dict(sorted(pools.items(), key=lambda kv: (CORPORA.index(kv[0][0]), list(PROTOCOLS).index(kv[0][1]))))
    stack_methods, stack_choices = stack_rows(args.out)
    lines = ["<!-- written by: .venv/bin/python study/tables.py > docs/study-tables.md -->", "",
             "# The study's tables", "", "Every loss is in nats per token (bytes). Seeds 0, 1, 2 everywhere.", "",
             "## Corpora and bases", "",
             "The base is configs/small.yaml trained on the corpus; its held-out loss is on the whole held-out set. "
             "The held-out documents are split into a selection set (read at every evaluated step: what choices "
             "see) and a test set (read at T: every result below).", "",
             *table(["corpus", "train tokens", "held-out tokens", "documents (selection / test)",
                     "windows (selection / test)", "overlapping windows", "base held-out loss", "unigram entropy"],
                    base_rows(args.out), "lrrrrlrr"),
             "## Protocols: the pick at k against what can be told apart at T", "",
             "best set: the strategies whose final test loss is within 2 standard errors of the best's (seeds "
             "paired, test windows paired). pick: the strategies tied for the lowest selection loss at the step "
             "(ties: float rounding or 2 paired window SEs; one of them is picked at random), and whether the pick "
             "lands in the best set (in / out / the probability it does). regret: the pick's expected final loss "
             "minus the best's. little lag: the first step from which rho >= 0.9 and the pick lands in the best "
             "set hold until T, with its share of the pool's final compute. The last two columns are the median "
             "standard errors of a final difference against the best: over seeds (paired) and over test windows "
             "(paired).", "",
             *table(["corpus", "protocol", "best at T", "best set", "rho at 0", "rho at k = 32 [95% CI]",
                     "pick at k", "top-1 at k", "regret at k", "pick at init", "little lag", "seed SE",
                     "window SE"], protocol_rows(pools), "llllrllrrlrrr"),
             f"## Final quality: each protocol's best against `{REFERENCE}`'s", "",
             "The best strategy's final test loss under the protocol minus the best under the reference, per seed "
             "and on average, with the SEs of the difference (paired by seed: the same seeds read the same batches "
             "in every protocol; paired by test window). better / worse: beyond 2 combined SEs.", "",
             *table(["corpus", "protocol", "strategies", "mean difference", "per seed", "seed SE", "window SE",
                     "verdict"], against_reference(pools), "lllrlrrl"),
             "## Predictors", "",
             "Each predictor ranks the strategies from their selection curves up to the step; rho against the "
             "final test loss; top-1, in-set (the probability that the pick lands in the best set) and regret of "
             "the pick at k; the little lag as above.", "",
             *table(["corpus", "protocol", "predictor", "rho at 0", "rho at k", "top-1 at k", "in set at k",
                     "regret at k", "little lag"], predictor_rows(pools), "lllrrrrrl"),
             "## Successive halving, replayed on the curves", "",
             "eta 2 over the strategies (3 seeds each), by the selection loss; the pick (in or out of the best "
             "set), its regret, its compute in candidate-steps and as a share of training every candidate to T; "
             "LAG at k: every candidate probed k steps.", "",
             *table(["corpus", "protocol", "first", "rounds end at", "pick", "regret", "compute",
                     "LAG at k: regret, compute"], halving_rows(pools), "llrllrrl"),
             "## Final test losses (mean ± sd over seeds), best first", "",
             *table(["corpus", "protocol", "strategies"], strategy_rows(pools), "lll"),
             "## Stacking at equal FLOPs (configs/stack-demo.yaml, seeds 0, 1, 2)", "",
             "Every method trained to adaptive's total FLOPs (its probes and their selection-set evaluations "
             "included): steps are each method's own. Final test loss ± its SE over seeds; window SE: of the "
             "seeds' mean over the test windows; gap ± the SE of the paired difference (seeds and windows); tied: "
             "within 2 SEs of the best; FLOPs saved: the share of scratch's (or top's) FLOPs not needed to reach "
             "its final test loss, with the seeds that reached it; noise: the median window SE / seed SE of a gap.",
             "",
             *table(["corpus", "method", "steps", "final test loss", "window SE", "FLOPs", "gap to best", "vs best",
                     "saved vs scratch", "saved vs top", "noise (window / seed)"], stack_methods, "llrrrrrlrrr"),
             "Adaptive's choices: growths, and how many matched top stacking, MIDAS, and the choice by the "
             "selection loss right after growth; ties: choices where another candidate was tied with the "
             "winner at the probe's end.", "",
             *table(["corpus", "growths", "= top", "= middle", "= by init loss", "with a tie"], stack_choices,
                    "lrrrrr")]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
