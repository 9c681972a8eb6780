"""A pool trained together (one vmapped program) against the same pool one candidate at a time.

    .venv/bin/python benchmarks/bench_pool.py [CONFIG] [--candidates 8] [--steps 20]

Each mode runs in its own subprocess, so that each reports its own peak resident memory; the two
run back to back in one invocation and the ratio of their wall times is printed. Compilation is
excluded from the timed steps and reported separately. The candidates are freshly initialised
models of CONFIG with different seeds: growth does not change the cost of a step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np


def run_mode(mode: str, config: str, n: int, steps: int) -> dict:
    from laggrow import model, train
    from laggrow.config import load_run_config
    from laggrow.pool import step as pool_train

    cfg = load_run_config(config)
    m, t = cfg.model, cfg.train
    rng = np.random.default_rng(0)
    batches = rng.integers(0, m.vocab_size, (steps + 1, n, t.batch_size, cfg.data.seq_len + 1), dtype=np.int32)
    opt = train.make_optimizer(t)

    def fresh(i):
        params = model.init_params(m, jax.random.key(i))
        return pool_train.candidate_state(params, opt.init(params), 1.0)

    if mode == "pool":
        state = pool_train.stack([fresh(i) for i in range(n)])
        step = pool_train.pool_step(m, t)
        c = time.perf_counter()
        state, metrics = step(state, batches[0])
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - c
        s = time.perf_counter()
        for i in range(1, steps + 1):
            state, metrics = step(state, batches[i])
        jax.block_until_ready(metrics)
        train_s = time.perf_counter() - s
    else:
        step = train.jit_train_step(m, t)
        compile_s, train_s = 0.0, 0.0
        for j in range(n):
            state = fresh(j)
            c = time.perf_counter()
            state, metrics = step(state, batches[0, j])
            jax.block_until_ready(metrics)
            compile_s += time.perf_counter() - c
            s = time.perf_counter()
            for i in range(1, steps + 1):
                state, metrics = step(state, batches[i, j])
            jax.block_until_ready(metrics)
            train_s += time.perf_counter() - s
    return {"mode": mode, "train_s": train_s, "compile_s": compile_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tokens_per_s": n * steps * t.batch_size * cfg.data.seq_len / train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mode", choices=["pool", "sequential"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.config, args.candidates, args.steps)))
        return
    results = {}
    for mode in ("pool", "sequential"):
        out = subprocess.run([sys.executable, __file__, args.config, "--candidates", str(args.candidates),
                              "--steps", str(args.steps), "--mode", mode], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"config {args.config}: {args.candidates} candidates x {args.steps} steps (compilation excluded)")
    for mode, r in results.items():
        print(f"{mode:10s}  {r['train_s']:7.2f} s  {r['tokens_per_s']:9,.0f} tokens/s  compile {r['compile_s']:5.2f} s"
              f"  peak RSS {r['peak_rss_mib']:,.0f} MiB")
    print(f"pool speed-up over one after another: {results['sequential']['train_s'] / results['pool']['train_s']:.2f}x")


if __name__ == "__main__":
    main()
