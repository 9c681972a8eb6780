"""Training throughput of one config against the machine's measured matmul rate.

    .venv/bin/python benchmarks/bench_train.py [CONFIG] [--steps N] [--set section.key=value ...]

Prints tokens/s, model FLOPs/s (6N + attention, as in PaLM's MFU), the matmul rate measured in
the same process on a (tokens x d_model) @ (d_model x d_ff) product of this config in the model's
own compute dtype (model.dtype: a bfloat16 model against a float32 matmul would flatter it), the
ratio of the two, the ratio to the device's nominal dense peak where benchmarks/peaks.py knows the
device (MFU), and the process's peak resident memory. Numbers, not assertions: run it, quote it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from peaks import TERA, describe, peak_flops  # benchmarks/peaks.py

from laggrow import model, train
from laggrow.config import load_run_config


def timed(fn, reps: int) -> float:
    """Best wall time of `reps` calls of `fn` (which blocks until its result is ready)."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    cfg = load_run_config(args.config, args.overrides)
    m, t = cfg.model, cfg.train
    batch = np.random.default_rng(0).integers(0, m.vocab_size, (t.batch_size, cfg.data.seq_len + 1), dtype=np.int32)
    state = train.init_state(model.init_params(m, jax.random.key(0)), train.make_optimizer(t))
    step = train.jit_train_step(m, t)

    c = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - c

    tokens = t.batch_size * cfg.data.seq_len
    dtype = jnp.dtype(m.dtype)  # the operands the model's matmuls see (params are cast to it)
    a = jax.random.normal(jax.random.key(0), (tokens, m.d_model), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (m.d_model, m.d_ff), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    holder = {"state": state}

    def one_step():
        holder["state"], out = step(holder["state"], batch)
        jax.block_until_ready(out)

    # These machines are shared: their speed drifts by 2x within minutes. Step and matmul are
    # timed in alternating rounds and compared round by round, so a ratio never mixes two speeds.
    rounds = []
    for _ in range(args.rounds):
        mm_s = timed(lambda: matmul(a, b).block_until_ready(), 10)
        step_s = timed(one_step, args.steps)
        rounds.append((step_s, 2 * tokens * m.d_model * m.d_ff / mm_s / 1e9))
    flops_per_step = m.train_flops_per_token(cfg.data.seq_len) * tokens
    ratios = sorted(flops_per_step / s / 1e9 / mm for s, mm in rounds)
    step_s = statistics.median(s for s, _ in rounds)
    mm = statistics.median(mm for _, mm in rounds)
    model_gflops = flops_per_step / step_s / 1e9
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind, m.dtype)

    print(f"config            {args.config} {' '.join(args.overrides)}")
    print(f"model             {m.n_layers} layers, d_model {m.d_model}, d_ff {m.d_ff}, heads {m.n_heads}, "
          f"{m.n_params():,} params; batch {t.batch_size} x seq {cfg.data.seq_len}")
    print(f"devices           {jax.devices()}")
    print(f"compile           {compile_s:.2f} s")
    print(f"step              {step_s * 1e3:.1f} ms (median over {args.rounds} rounds of the best of {args.steps})")
    print(f"tokens/s          {tokens / step_s:,.0f}")
    print(f"model GFLOP/s     {model_gflops:.1f}")
    print(f"matmul GFLOP/s    {mm:.1f}  ({tokens}x{m.d_model} @ {m.d_model}x{m.d_ff}, {m.dtype}, median of rounds)")
    print(f"model / matmul    {statistics.median(ratios):.1%} (median of per-round ratios; range "
          f"{ratios[0]:.1%} to {ratios[-1]:.1%})")
    print(f"device peak       {describe(kind, m.dtype)}")
    if peak is None:
        print("model / peak      unknown (no nominal peak for this device and dtype in benchmarks/peaks.py)")
    else:
        per_round = sorted(flops_per_step / s / peak for s, _ in rounds)
        print(f"model / peak      {model_gflops * 1e9 / peak:.1%} (MFU at the median step; range {per_round[0]:.1%} "
              f"to {per_round[-1]:.1%}); matmul / peak {mm * 1e9 / peak:.1%} of {peak / TERA:,.0f} TFLOP/s")
    print(f"peak RSS          {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
