"""The up-scaling study's tables, from the directories study/upscale.py trained.

    .venv/bin/python study/upscale_tables.py [--out runs/upscale-study] > docs/upscaling-tables.md

Per corpus: the base; per pool (a target depth and its recipes): the pick at k against the set that
cannot be told from the best at T (ties, seed noise and evaluation noise as laggrow.analysis takes
them); each recipe's selection loss right after growth and at k, and its final test loss; the
identity recipes (function-preserving: they start at the base's loss) against the copies that do
not, paired by seed; successive halving replayed. All numbers come from laggrow.analysis over the
recorded files; nothing is trained here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from laggrow import store
from laggrow.analysis import noise
from laggrow.growth import registry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "study"))
from tables import Pool, fmt, halving_rows, protocol_rows, table  # noqa: E402
from upscale import CONFIG, CORPORA  # noqa: E402


def pool_specs() -> dict[str, list[dict]]:
    """Pool name -> its strategy entries (mappings with name and label), as configs/upscale.yaml has them."""
    pools = yaml.safe_load(CONFIG.read_text())["pools"]
    return {name: [e if isinstance(e, dict) else {"name": e} for e in pool["strategies"]]
            for name, pool in pools.items()}


def base_depth() -> int:
    base = CONFIG.parent / yaml.safe_load(CONFIG.read_text())["base"]
    return int(yaml.safe_load(base.read_text())["model"]["n_layers"])


def kind(entry: dict) -> str:
    """identity: the grown model computes the base's function (a function-preserving strategy, or
    slices whose ranges not zeroed concatenate to the base's layers in order); scratch; else copy."""
    name = entry["name"]
    if name == "scratch":
        return "scratch"
    if name == "slices":
        kept = [layer for r in entry["ranges"] if len(r) == 2 for layer in range(r[0], r[1])]
        return "identity" if kept == list(range(base_depth())) else "copy"
    return "identity" if registry.get_strategy(name).function_preserving else "copy"


def base_rows(out: Path) -> list[list[str]]:
    rows = []
    for corpus in CORPORA:
        base = out / corpus / "base"
        if not (base / store.SUMMARY_FILE).is_file():
            continue
        summary = store.read_json(base / store.SUMMARY_FILE, "summary")
        data = store.read_json(base / store.DATA_FILE, "data record")
        rows.append([corpus, f"{data['train_tokens']:,}", f"{data['heldout_tokens']:,}",
                     f"{summary['final_eval_loss']:.4f}", f"{summary['heldout_unigram_entropy']:.4f}"])
    return rows


def mean_at(p: Pool, label: str, step: int) -> float:
    rows = [i for i, c in enumerate(p.curves.candidates) if c.strategy == label]
    return float(np.nanmean(p.curves.loss[rows, list(p.curves.steps).index(step)]))


def recipe_rows(pools: dict, specs: dict) -> list[list[str]]:
    rows = []
    for (corpus, name), p in pools.items():
        if p is None:
            continue
        for entry in sorted(specs[name], key=lambda e: p.by_name[e.get("label", e["name"])]["final_loss"]):
            label = entry.get("label", entry["name"])
            s = p.by_name[label]
            rows.append([corpus, name, f"`{label}`", kind(entry), f"{mean_at(p, label, 0):.4f}",
                         f"{mean_at(p, label, p.k):.4f}", f"{s['final_loss']:.4f} ± {fmt(s['final_loss_sd'])}",
                         "yes" if s["in_best_set"] else "no"])
    return rows


def identity_rows(pools: dict, specs: dict) -> list[list[str]]:
    """The best identity recipe against the best copy recipe at T, paired by seed and test window."""
    rows = []
    for (corpus, name), p in pools.items():
        if p is None:
            continue
        by_kind: dict[str, list[str]] = {}
        for entry in specs[name]:
            by_kind.setdefault(kind(entry), []).append(entry.get("label", entry["name"]))
        if not by_kind.get("identity") or not by_kind.get("copy"):
            continue
        best = {k: min(labels, key=lambda lb: p.by_name[lb]["final_loss"]) for k, labels in by_kind.items()}
        a, b = best["identity"], best["copy"]
        fa, fb = p.final_by_seed(a), p.final_by_seed(b)
        diff = float(np.mean([fa[s] - fb[s] for s in fa]))
        seed_se = noise.paired_seed_se(fa, fb)
        wa, wb = p.final_windows(a), p.final_windows(b)
        eval_se = None if wa is None else noise.paired_window_se(wa, wb)
        se = noise.combined_se(seed_se, eval_se)
        verdict = "–" if se is None else ("identity better" if diff < -noise.Z * se else
                                           "copy better" if diff > noise.Z * se else "cannot be told apart")
        rows.append([corpus, name, f"`{a}`", f"`{b}`", f"{diff:+.4f}",
                     ", ".join(f"{fa[s] - fb[s]:+.4f}" for s in sorted(fa)), fmt(seed_se), fmt(eval_se), verdict])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "upscale-study")
    args = parser.parse_args()
    specs = pool_specs()
    pools = {}
    for name in specs:
        for corpus in CORPORA:
            directory = args.out / corpus / name
            pools[(corpus, name)] = Pool(directory) if (directory / store.FINAL_FILE).is_file() else None
    k = next((p.k for p in pools.values() if p is not None), "k")
    lines = ["<!-- written by: .venv/bin/python study/upscale_tables.py > docs/upscaling-tables.md -->", "",
             "# The up-scaling study's tables", "",
             "Every loss is in nats per token (the base's 1024-token BPE). Seeds 0, 1, 2 everywhere.", "",
             "## Corpora and bases", "",
             "The base is configs/upscale-base.yaml trained on the corpus; its held-out loss is on the whole "
             "held-out set.", "",
             *table(["corpus", "train tokens", "held-out tokens", "base held-out loss", "unigram entropy"],
                    base_rows(args.out), "lrrrr"),
             "## The pick at k against what can be told apart at T", "",
             "As in study-tables.md: best set: the recipes whose final test loss is within 2 SEs of the best's "
             "(seeds and test windows paired); pick: the recipes tied for the lowest selection loss at the step, "
             "and whether the pick lands in the best set; regret: the pick's expected final loss minus the "
             "best's; little lag: the first step from which rho >= 0.9 and the pick lands in the best set hold "
             "until T; the median SEs of a final difference against the best over seeds and over test windows.",
             "",
             *table(["corpus", "pool", "best at T", "best set", "rho at 0", f"rho at k = {k} [95% CI]", "pick at k",
                     "top-1 at k", "regret at k", "pick at init", "little lag", "seed SE", "window SE"],
                    protocol_rows(pools), "llllrllrrlrrr"),
             "## Every recipe: right after growth, at k, at T", "",
             "identity: the grown model computes the base's function (it starts at the base's loss); copy: "
             "layers copied without zeroing; scratch: a fresh init. Selection loss (mean over seeds) at step 0 "
             "and at k; final test loss (mean ± sd over seeds); in the best set at T. Best first.", "",
             *table(["corpus", "pool", "recipe", "kind", "loss at 0", f"loss at k = {k}", "final test loss",
                     "best set"], recipe_rows(pools, specs), "llllrrrl"),
             "## Identity recipes against copies", "",
             "The best identity recipe's final test loss minus the best copy recipe's, per seed and on average, "
             "with the SEs of the difference (paired by seed and by test window); better: beyond 2 combined SEs.",
             "",
             *table(["corpus", "pool", "identity", "copy", "mean difference", "per seed", "seed SE", "window SE",
                     "verdict"], identity_rows(pools, specs), "llllrlrrl"),
             "## Successive halving, replayed on the curves", "",
             "eta 2 over the recipes (3 seeds each), by the selection loss; the pick (in or out of the best set), "
             "its regret, its compute in candidate-steps and as a share of training every candidate to T; LAG at "
             "k: every candidate probed k steps.", "",
             *table(["corpus", "pool", "first", "rounds end at", "pick", "regret", "compute",
                     "LAG at k: regret, compute"], halving_rows(pools), "llrllrrl")]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
