"""Throughput of a training run and of a pool on 1, 2, 4, 8 devices (laggrow.mesh layouts).

    .venv/bin/python benchmarks/bench_scale.py [CONFIG] [--devices 1 2 4 8] [--candidates 8]
        [--steps 3] [--rounds 3] [--fsdp] [--set section.key=value ...]

    # on a CPU-only machine, as many forced host devices as the largest count (shared cores):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/bench_scale.py

For each device count of `--devices` that jax.devices() has, two modes (three with --fsdp) on the
first that many devices (mesh.make_mesh):

    run    one training run of CONFIG, every batch split over the data axis: Layout(1, d)
    pool   `--candidates` freshly initialised candidates (seeds 0..N-1), stacked and vmapped
           (pool.step.pool_step), split over the candidate axis: Layout(d, 1); a count that does
           not divide N is padded up to a multiple of it as PoolRunner pads a chunk (the padding
           is trained and not counted), and a count above N is skipped (mesh.resolve never
           puts more than one device on a candidate)
    fsdp   (with --fsdp) the run on Layout(1, d, fsdp=True): parameters and AdamW moments split
           over the data axis too; compared with the run on 1 device

A run's batch (train.batch_size) must divide over the data axis: a count that does not is skipped.
States are placed with mesh.place_state and batches with mesh.place_batch before timing (two
batches, used in turn), so the timed steps are the jitted step alone, host transfers excluded.
The first step of each layout compiles it and is reported apart, as `compile` (compiling plus
that one step; a persistent compilation cache, JAX_COMPILATION_CACHE_DIR, makes it a cache read).
Then `--rounds` rounds of `--steps` steps, each round blocked on at its end (jax.block_until_ready):
the step time is the median over rounds of a round's time / steps, with the fastest and slowest
round beside it (`round range`). tokens/s counts batch x seq_len tokens a step (pool:
candidate-tokens, N x batch x seq_len); speed-up is the 1-device step time
of the same work over this one (fsdp: over the run's), efficiency is speed-up / devices. `loss
diff` is the largest |difference| of the first step's train loss(es) from the 1-device layout's,
from the same initial state and batch: float rounding only (a check that the layout is right, not
a figure of speed). Numbers, not assertions: run it, quote it, with the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import jax
import numpy as np

from laggrow import mesh, model, train
from laggrow.config import load_run_config
from laggrow.mesh import Layout
from laggrow.pool import step as pool_train


@dataclass
class Result:
    mode: str
    devices: int
    layout: Layout
    note: str
    compile_s: float
    step_s: float  # median over rounds
    fastest_s: float
    slowest_s: float
    tokens_per_step: int
    loss: np.ndarray  # the first step's train loss(es)


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(step, state, batches: list[jax.Array], steps: int, rounds: int) -> tuple[float, list[float], np.ndarray]:
    """(compile s, per-round step times, first step's loss) of the jitted, state-donating `step`."""
    c = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - c
    loss = np.asarray(mesh.to_host(metrics["loss"]), np.float64)
    times, i = [], 1
    for _ in range(rounds):
        s = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batches[i % len(batches)])
            i += 1
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - s) / steps)
    return compile_s, times, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], metavar="D",
                        help="device counts to measure (those above jax.device_count() are skipped)")
    parser.add_argument("--candidates", type=int, default=8, help="pool size of the pool mode")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsdp", action="store_true", help="also the run with FSDP on the data axis")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if min(args.devices) < 1 or args.candidates < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--devices, --candidates, --steps and --rounds: expected integers >= 1")
    counts = sorted(set(args.devices))

    cfg = load_run_config(args.config, args.overrides)
    m, t = cfg.model, cfg.train
    seq, batch_size, n = cfg.data.seq_len, t.batch_size, args.candidates
    devices = jax.devices()
    platform, kind = devices[0].platform, devices[0].device_kind

    print(f"config            {' '.join([args.config, *args.overrides])}")
    print(f"model             {m.n_layers} layers, d_model {m.d_model}, d_ff {m.d_ff}, heads {m.n_heads}, "
          f"{m.n_params():,} params, {m.dtype}; batch {batch_size} x seq {seq}; pool of {n}")
    print(f"devices           {len(devices)} x {platform} ({kind}), {jax.process_count()} process(es); "
          f"{os.cpu_count()} host CPUs")
    if platform == "cpu":
        print("                  forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) share "
              "the same host cores: these figures show correctness and overhead, not speed")
    print(f"timing            median over {args.rounds} rounds of {args.steps} steps; compile (first step) apart")
    print(f"at start          {load()}")
    skipped = [d for d in counts if d > len(devices)]
    counts = [d for d in counts if d <= len(devices)]
    if skipped:
        hint = (f" (XLA_FLAGS=--xla_force_host_platform_device_count={max(skipped)} forces more CPU devices)"
                if platform == "cpu" else "")
        print(f"skipped           {', '.join(map(str, skipped))} device(s): only {len(devices)} present{hint}")

    rng = np.random.default_rng(0)
    run_batches = rng.integers(0, m.vocab_size, (2, batch_size, seq + 1), dtype=np.int32)
    pool_batches = rng.integers(0, m.vocab_size, (2, n, batch_size, seq + 1), dtype=np.int32)
    opt = train.make_optimizer(t)
    # host copies: each layout places its own (the steps donate their state)
    run_state = jax.device_get(train.init_state(model.init_params(m, jax.random.key(0)), opt))

    def fresh(i):
        params = model.init_params(m, jax.random.key(i))
        return pool_train.candidate_state(params, opt.init(params), 1.0)

    pool_state = jax.device_get(pool_train.stack([fresh(i) for i in range(n)]))

    def run_mode(mode: str, d: int, layout: Layout) -> Result | str:
        if batch_size % layout.data:
            return f"data axis {layout.data} does not divide train.batch_size {batch_size}"
        if mode == "pool":
            if d > n:
                return f"{d} devices for {n} candidates (at most one device a candidate)"
            size = mesh.padded_size(n, layout)
            pad = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])  # copies of candidate 0
            state = mesh.place_state(jax.tree.map(lambda x: x[pad], pool_state), layout, stacked=True)
            batches = [mesh.place_batch(b[pad], layout, stacked=True) for b in pool_batches]
            step = pool_train.pool_step(m, t, layout)
            note, tokens = (f"padded to {size}" if size > n else ""), n * batch_size * seq
        else:
            state = mesh.place_state(run_state, layout, stacked=False)
            batches = [mesh.place_batch(b, layout, stacked=False) for b in run_batches]
            step = train.jit_train_step(m, t, layout)
            note, tokens = "", batch_size * seq
        compile_s, times, loss = measure(step, state, batches, args.steps, args.rounds)
        return Result(mode, d, layout, note, compile_s, statistics.median(times), min(times), max(times),
                      tokens, loss[:n] if mode == "pool" else loss)

    modes = [("run", lambda d: Layout(1, d)), ("pool", lambda d: Layout(d, 1))]
    if args.fsdp:
        modes.append(("fsdp", lambda d: Layout(1, d, fsdp=True)))
    header = (f"{'mode':5s}  {'devices':>7s}  {'c x d':>6s}  {'step':>9s}  {'round range':>17s}  {'tokens/s':>12s}  "
              f"{'speed-up':>8s}  {'efficiency':>10s}  {'compile':>8s}  {'loss diff':>9s}  note")
    print()
    print(header)
    print("-" * len(header))
    base: dict[str, Result] = {}
    for mode, layout_for in modes:
        for d in counts:
            if mode == "fsdp" and d == 1:
                continue  # FSDP on one device is the run's 1-device layout
            layout = layout_for(d)
            r = run_mode(mode, d, layout)
            if isinstance(r, str):
                print(f"{mode:5s}  {d:7d}  {'':>6s}  skipped: {r}", flush=True)
                continue
            ref = base.setdefault("run" if mode == "fsdp" else mode, r)
            speedup = ref.step_s / r.step_s * (1 if ref.devices == 1 else ref.devices)
            # with no 1-device row the baseline is the smallest count measured, taken as perfectly parallel
            shape = f"{layout.candidates}x{layout.data}"
            diff = float(np.max(np.abs(r.loss - ref.loss))) if ref.loss.shape == r.loss.shape else float("nan")
            print(f"{mode:5s}  {d:7d}  {shape:>6s}  {r.step_s * 1e3:6.1f} ms  "
                  f"{r.fastest_s * 1e3:6.1f} - {r.slowest_s * 1e3:6.1f} ms  {r.tokens_per_step / r.step_s:12,.0f}  "
                  f"{speedup:7.2f}x  {speedup / d:10.0%}  {r.compile_s:7.2f}s  {diff:9.1e}  {r.note}".rstrip(),
                  flush=True)
    print()
    print(f"at end            {load()}")
    if base and any(b.devices != 1 for b in base.values()):
        print("speed-up          no 1-device row: relative to the smallest count measured, taken as "
              "perfectly parallel")


if __name__ == "__main__":
    main()
