"""Training throughput of one config against the machine's measured matmul rate.

    .venv/bin/python benchmarks/bench_train.py [CONFIG] [--steps N] [--set section.key=value ...]

Prints tokens/s, model FLOPs/s (6N + attention, as in PaLM's MFU), the fp32 matmul rate measured
in the same process on a (tokens x d_model) @ (d_model x d_ff) product of this config, the ratio
of the two, and the process's peak resident memory. Numbers, not assertions: run it, quote it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from laggrow import model, train
from laggrow.config import load_run_config


def matmul_rate(m: int, k: int, n: int, reps: int = 20) -> float:
    """fp32 GFLOP/s of a jitted (m, k) @ (k, n) product: best of `reps` timed calls."""
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / min(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--steps", type=int, default=10)
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
    times = []
    for _ in range(args.steps):
        s = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - s)
    step_s = statistics.median(times)

    tokens = t.batch_size * cfg.data.seq_len
    model_gflops = m.train_flops_per_token(cfg.data.seq_len) * tokens / step_s / 1e9
    mm = matmul_rate(tokens, m.d_model, m.d_ff)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"config            {args.config} {' '.join(args.overrides)}")
    print(f"model             {m.n_layers} layers, d_model {m.d_model}, d_ff {m.d_ff}, heads {m.n_heads}, "
          f"{m.n_params():,} params; batch {t.batch_size} x seq {cfg.data.seq_len}")
    print(f"devices           {jax.devices()}")
    print(f"compile           {compile_s:.2f} s")
    print(f"step              {step_s * 1e3:.1f} ms (median of {args.steps}; min {min(times) * 1e3:.1f})")
    print(f"tokens/s          {tokens / step_s:,.0f}")
    print(f"model GFLOP/s     {model_gflops:.1f}")
    print(f"matmul GFLOP/s    {mm:.1f}  ({tokens}x{m.d_model} @ {m.d_model}x{m.d_ff}, fp32, same process)")
    print(f"model / matmul    {model_gflops / mm:.1%}")
    print(f"peak RSS          {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
