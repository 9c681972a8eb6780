"""A pool trained together (one vmapped program) against the same pool one candidate at a time.

    .venv/bin/python benchmarks/bench_pool.py [CONFIG] [--candidates 8 16 32] [--steps 20] [--set section.key=value ...]

For each pool size of `--candidates` (a sweep), each mode runs in its own subprocess, so that
each reports its own peak resident memory; the two run back to back in one invocation and the
ratio of their wall times is printed, with the candidate-tokens/s (candidates x batch x seq_len
tokens a step) of each. Compilation is excluded from the timed steps and reported separately.
The candidates are freshly initialised models of CONFIG with different seeds: growth does not
change the cost of a step. Each size also shows the chunk `chunk_size: auto` would take on this
device (laggrow.pool.step.chunk_for): the pool mode here trains all of them at once regardless.
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


def run_mode(mode: str, config: str, n: int, steps: int, overrides: list[str]) -> dict:
    from laggrow import model, train
    from laggrow.config import load_run_config
    from laggrow.pool import step as pool_train

    cfg = load_run_config(config, overrides)
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
    parser.add_argument("--candidates", type=int, nargs="+", default=[8], metavar="N",
                        help="pool sizes to measure, e.g. --candidates 8 16 32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--mode", choices=["pool", "sequential"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(n < 1 for n in args.candidates) or args.steps < 1:
        parser.error("--candidates and --steps: expected integers >= 1")
    sets = [a for o in args.overrides for a in ("--set", o)]
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.config, args.candidates[0], args.steps, args.overrides)))
        return
    print(f"config {' '.join([args.config, *args.overrides])}: {args.steps} steps per candidate "
          f"(compilation excluded and reported apart); devices {jax.devices()}")
    from laggrow.config import load_run_config
    from laggrow.pool.step import chunk_for, device_memory

    cfg = load_run_config(args.config, args.overrides)
    memory, source = device_memory()
    print(f"chunk_size auto sizes from {memory / 2**30:,.1f} GiB ({source})")
    print(f"{'candidates':>10s}  {'mode':10s}  {'train':>8s}  {'cand-tokens/s':>13s}  {'compile':>8s}  {'peak RSS':>9s}"
          f"  speed-up  auto chunk")
    for n in args.candidates:
        auto = chunk_for("auto", cfg, n)["together"]
        results = {}
        for mode in ("pool", "sequential"):
            out = subprocess.run([sys.executable, __file__, args.config, "--candidates", str(n), "--steps",
                                  str(args.steps), "--mode", mode, *sets], capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        speedup = results["sequential"]["train_s"] / results["pool"]["train_s"]
        for mode, r in results.items():
            print(f"{n:10d}  {mode:10s}  {r['train_s']:7.2f}s  {r['tokens_per_s']:13,.0f}  {r['compile_s']:7.2f}s"
                  f"  {r['peak_rss_mib']:5,.0f} MiB  {f'{speedup:7.2f}x  {auto:10d}' if mode == 'pool' else ''}",
                  flush=True)


if __name__ == "__main__":
    main()
