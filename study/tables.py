"""The predictor study's tables, from the pool directories study/run.py trained.

    .venv/bin/python study/tables.py [--out runs/study] > docs/study-tables.md

For every corpus x protocol: the best final loss and the seed noise; for every predictor, rho at
step 0 and at k with top-1 and regret there, and its little lag with that lag's share of the
final compute; successive halving replayed (eta 2, first 4 and 8) against LAG at k. All numbers
come from laggrow.analysis over the recorded curves.jsonl; nothing is trained here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from laggrow import analysis
from laggrow.errors import LaggrowError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "study"))
from run import CORPORA, PROTOCOLS  # noqa: E402

HALVING_FIRST = (4, 8)


def fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    args = parser.parse_args()
    lines = ["<!-- written by: .venv/bin/python study/tables.py > docs/study-tables.md -->", ""]
    summary, halving_rows, strategy_rows = [], [], []
    for corpus in CORPORA:
        for protocol in PROTOCOLS:
            directory = args.out / corpus / protocol
            if not (directory / "final.json").is_file():
                summary.append(f"| {corpus} | {protocol} | not run | | | | | | | |")
                continue
            curves = analysis.load_curves(directory)
            result = analysis.correlate(curves, n_boot=1000, seed=0)
            comparison = analysis.compare_predictors(curves)
            finals = {s["strategy"]: (s["final_loss"], s["final_loss_sd"]) for s in result.strategies}
            best = min(finals, key=lambda n: finals[n][0])
            k = result.lag_steps
            at_k = result.rows[result.steps.index(k)]
            init = result.rows[0]
            tol = result.little_lag["regret_tol"]
            ranked = sorted(finals, key=lambda n: finals[n][0])
            strategy_rows.append(f"| {corpus} | {protocol} | " + ", ".join(
                f"`{n}` {finals[n][0]:.4f}±{finals[n][1]:.4f}" for n in ranked) + " |")
            for p in comparison["predictors"]:
                pk, p0 = p["at_k"] or {}, p["at_init"] or {}
                summary.append(
                    f"| {corpus} | {protocol} | `{p['predictor']}` | {fmt(p0.get('spearman'), '.2f')} | "
                    f"{fmt(pk.get('spearman'), '.2f')}"
                    + (f" [{at_k.spearman_ci[0]:.2f}, {at_k.spearman_ci[1]:.2f}]"
                       if p["predictor"] == "loss" and at_k.spearman_ci else "")
                    + f" | {fmt(pk.get('top1'), '.2f')} | {fmt(pk.get('regret'), '.4f')} | "
                    f"{p['little_lag'] if p['little_lag'] is not None else 'none'} | {pct(p['little_lag_compute'])} | "
                    f"{finals[best][0]:.4f} (`{best}`) | {tol:.4f} |")
            for first in HALVING_FIRST:
                try:
                    h = analysis.replay_halving(curves, eta=2, first=first)
                except LaggrowError as err:
                    halving_rows.append(f"| {corpus} | {protocol} | {first} | {err} | | | | |")
                    continue
                lag = h["probe_everyone_k"]
                halving_rows.append(
                    f"| {corpus} | {protocol} | {first} | "
                    f"{' → '.join(str(r['steps']) for r in h['rounds'])} | `{h['winner']}` | {h['regret']:.4f} | "
                    f"{h['candidate_steps']:,} ({pct(h['fraction_of_train_everyone'])}) | "
                    f"{lag.get('regret', 0):.4f} for {lag['candidate_steps']:,} "
                    f"({pct(lag['candidate_steps'] / h['train_everyone']['candidate_steps'])}) |")
            del init
    lines += ["## Predictors by corpus and protocol", "",
              "rho: Spearman between the strategies' scores at the step and their mean final loss over 3 "
              "seeds (95% bootstrap interval for `loss` at k); top-1 and regret of the choice at k; little lag: "
              "first step from which rho >= 0.9 and regret <= the seed noise hold to the end, and its share of the "
              "pool's final compute; best final: the lowest mean final loss of the protocol; seed noise: one "
              "standard error of the difference of two strategies' mean final losses (the regret tolerance).", "",
              "| corpus | protocol | predictor | rho at 0 | rho at k | top-1 at k | regret at k | little lag | "
              "its cost | best final | seed noise |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|", *summary, "",
              "## Successive halving, replayed on the curves", "",
              "eta 2 over the 6 strategies (3 seeds each), by the loss; compute in candidate-steps and as a share of "
              "training every candidate to T; LAG at k: probe every candidate k steps, pick the lowest loss.", "",
              "| corpus | protocol | first | rounds end at | pick | regret | compute | LAG at k: regret, compute |",
              "|---|---|---:|---|---|---:|---:|---|", *halving_rows, "",
              "## Final losses (mean ± sd over seeds), best first", "",
              "| corpus | protocol | strategies |", "|---|---|---|", *strategy_rows, ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
