"""How large must the selection set be for LAG's pick at k? Measured on the study's probes.

    .venv/bin/python study/selection_size.py [--out runs/study] [--batches 20]

A pool reads its selection set (data.eval_batches x eval_batch_size = 64 windows) at every
evaluated step, and candidates closer than 2 paired window SEs there are tied: the pick among them
is random. For every finished pool of study/run.py this restores the probe's states at k
(POOL/probe_state) and evaluates them again on `--batches` x eval_batch_size windows of the same
selection documents, then compares the pick at k (tie groups as laggrow.analysis takes them) and
whether it lands in the pool's best set at T, with the 64 windows recorded and with the larger
set. Nothing is trained; the test set is not read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from laggrow import mesh, run_dir
from laggrow.analysis import correlate, load_curves, noise
from laggrow.checkpoint import Checkpointer
from laggrow.pool.step import PoolRunner
from laggrow.pool.trainer import abstract_pool_state, read_pool_dir
from laggrow.store import FINAL_FILE, PROBE_STATE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "study"))
from run import CORPORA, PROTOCOLS  # noqa: E402


def pick_at_k(names: list[str], strategy_of: list[str], windows: np.ndarray, best: set[str]) -> tuple[list[str], float]:
    """The strategies tied for the lowest mean loss (per-window losses (candidates, windows),
    averaged over each strategy's seeds) and the share of them in `best`."""
    per_strategy = np.stack([windows[[i for i, s in enumerate(strategy_of) if s == n]].mean(axis=0) for n in names])
    means = per_strategy.mean(axis=1)
    tol = noise.tie_tolerances(means, per_strategy)
    picked = [names[i] for i in noise.leaders(means, tol)]
    return picked, float(np.mean([p in best for p in picked]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--batches", type=int, default=20, help="selection batches of eval_batch_size windows")
    args = parser.parse_args()
    print("| corpus | protocol | windows | pick at k | in the best set | windows | pick at k | in the best set |")
    print("|---|---|---:|---|---:|---:|---|---:|")
    for corpus in CORPORA:
        for protocol in PROTOCOLS:
            directory = args.out / corpus / protocol
            if not (directory / FINAL_FILE).is_file():
                continue
            result = correlate(load_curves(directory), n_boot=0)
            best = set(result.best_set["members"])
            pool, meta, target = read_pool_dir(directory)
            strategy_of = [c["strategy"] for c in meta["candidates"]]
            names = sorted(set(strategy_of))
            k_row = result.rows[result.steps.index(pool.lag_steps)]
            source = run_dir.load_run(Path(meta["source"]))
            data = run_dir.load_source_dataset(source)
            n = len(strategy_of)
            abstract = mesh.abstract_state(abstract_pool_state(target, n), mesh.SINGLE, stacked=True)
            with Checkpointer(directory / PROBE_STATE) as ckpt:
                state, _ = ckpt.restore(abstract, step=pool.lag_steps)
            size = target.data.eval_batch_size
            runner = PoolRunner(target.model, target.train, lambda _step: None,
                                {"selection": data.selection_batches(args.batches, size)})
            windows = runner.evaluate(jax.device_put(state), ("selection",))["selection"]
            picked, in_best = pick_at_k(names, strategy_of, windows, best)
            recorded = target.data.eval_batches * size
            print(f"| {corpus} | {protocol} | {recorded} | {', '.join(k_row.leaders)} | {k_row.in_best_set:.2f} | "
                  f"{windows.shape[1]} | {', '.join(picked)} | {in_best:.2f} |", flush=True)


if __name__ == "__main__":
    main()
