"""What XLA's CPU compile flags cost and buy on one small step: the flags the test suite sets
(tests/conftest.py, TEST_XLA_FLAGS) against XLA's defaults, which laggrow itself keeps.

    .venv/bin/python benchmarks/bench_compile_flags.py [CONFIG ...] [--rounds N] [--steps S]

For each flag set and config (default configs/tiny.yaml and configs/tiny-llama.yaml), a fresh
process with that XLA_FLAGS and no persistent compilation cache lowers and compiles the config's
train step and its evaluation, then runs the step S times; it prints the seconds each compile took
and the milliseconds per step. Rounds alternate the flag sets, so they are compared at the same
machine speed; the table shows each figure's median over rounds. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FLAG_SETS = {
    "XLA default": "",
    "LLVM optimisation off": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    "+ older fusion emitters": ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                                "--xla_cpu_use_fusion_emitters=false"),
}

# Run in the child: compile and time one config's step and evaluation under the inherited XLA_FLAGS.
CHILD = """
import json, sys, time
import jax, jax.numpy as jnp
from laggrow import model, train
from laggrow.config import load_run_config

cfg = load_run_config(sys.argv[1])
steps = int(sys.argv[2])
params = model.init_params(cfg.model, jax.random.key(0))
state = train.init_state(params, train.make_optimizer(cfg.train))
batch = jnp.zeros((cfg.train.batch_size, cfg.data.seq_len + 1), jnp.int32)
t = time.perf_counter()
step = jax.jit(train.make_train_step(cfg.model, cfg.train)).lower(state, batch).compile()
compile_step = time.perf_counter() - t
t = time.perf_counter()
jax.jit(train.make_eval(cfg.model)).lower(params, batch[None]).compile()
compile_eval = time.perf_counter() - t
state, metrics = step(state, batch)  # the first call's set-up is not a step
jax.block_until_ready(metrics)
t = time.perf_counter()
for _ in range(steps):
    state, metrics = step(state, batch)
jax.block_until_ready(metrics)
print(json.dumps({"compile_step": compile_step, "compile_eval": compile_eval,
                  "step_ms": 1000 * (time.perf_counter() - t) / steps}))
"""


def measure(config: str, flags: str, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    env.update(XLA_FLAGS=flags, LAGGROW_COMPILATION_CACHE="off", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD, config, str(steps)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{config} with XLA_FLAGS={flags!r}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["configs/tiny.yaml", "configs/tiny-llama.yaml"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    seen: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for config in args.configs:
            for name, flags in FLAG_SETS.items():
                seen.setdefault((config, name), []).append(measure(config, flags, args.steps))
    print(f"medians of {args.rounds} rounds, {args.steps} steps each")
    print(f"{'config':<26} {'flags':<25} {'compile step s':>14} {'compile eval s':>14} {'step ms':>8}")
    for (config, name), rows in seen.items():
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(f"{config:<26} {name:<25} {median['compile_step']:>14.2f} {median['compile_eval']:>14.2f} "
              f"{median['step_ms']:>8.1f}")


if __name__ == "__main__":
    main()
