"""The demo's probe with JAX's persistent compilation cache: off, cold and warm, in one invocation.

    .venv/bin/python benchmarks/bench_compile_cache.py [--lag-steps K] [--rounds N]

Trains a 2-step base of configs/small.yaml (the demo's base model: only its shapes matter here),
writes the demo's pool (configs/demo.yaml's `pool` section, pointed at that base, k = --lag-steps)
and runs the real `laggrow probe` in fresh processes:

- off:  LAGGROW_COMPILATION_CACHE=off, every program compiled;
- cold: an empty cache directory, every program compiled and written;
- warm: the same directory again, the programs read back.

For each process it prints the wall time of the whole command (what a user waits for: starting
Python, loading the corpus, growing 9 candidates, k steps, evaluations) and the seconds JAX spent
compiling, summed from its own log (JAX_LOG_COMPILES: "Finished XLA compilation ... in S sec",
a cache hit logs the time to load the program), with the number of persistent-cache hits. The
compile seconds are the figure to compare: wall times on a shared machine are noisy.
Rounds alternate off / cold / warm (a fresh cold directory each round), so the three are compared
at the same machine speed. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


COMPILED = re.compile(r"Finished XLA compilation of .* in ([0-9.eE+-]+) sec")
CACHE_HIT = "Persistent compilation cache hit"


def laggrow(args: list[str], cache: str) -> tuple[float, float, int]:
    """One `python -m laggrow ARGS` with LAGGROW_COMPILATION_CACHE=cache: its wall seconds, the
    seconds JAX logged compiling, and its persistent-cache hits."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(LAGGROW_COMPILATION_CACHE=cache, JAX_LOG_COMPILES="1")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "laggrow", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        sys.exit(f"laggrow {' '.join(args)} failed ({proc.returncode}): {' '.join(errors) or proc.stderr[-500:]}")
    compiling = sum(float(m.group(1)) for m in COMPILED.finditer(proc.stderr))
    return seconds, compiling, proc.stderr.count(CACHE_HIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lag-steps", type=int, default=8, help="k of the probe (the demo's is 32)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-") as tmp:
        work = Path(tmp)
        base = work / "base"
        laggrow(["train", str(REPO / "configs" / "small.yaml"), "--out", str(base), "--set", "train.steps=2",
                 "--set", "train.warmup_steps=0", "--set", "train.eval_every=2"], "off")
        pool = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["pool"]
        pool.update(source=str(base), lag_steps=args.lag_steps, eval_every=0, eval_points=2)
        pool_file = work / "pool.yaml"
        pool_file.write_text(yaml.safe_dump(pool))

        kinds = (("off", "off"), ("cold", None), ("warm", None))
        runs: dict[str, list[tuple[float, float, int]]] = {kind: [] for kind, _ in kinds}
        for r in range(args.rounds):
            cache = work / f"cache-{r}"
            for kind, where in kinds:
                out = work / f"pool-{kind}-{r}"
                runs[kind].append(laggrow(["probe", str(pool_file), "--out", str(out)], where or str(cache)))
            print(f"round {r}: " + ", ".join(f"{kind} {runs[kind][-1][0]:.1f} s wall, {runs[kind][-1][1]:.1f} s "
                                             f"compiling, {runs[kind][-1][2]} cache hits" for kind, _ in kinds),
                  flush=True)

    print(f"demo pool         {len(pool['strategies'])} candidates, {pool['target']} from configs/small.yaml, "
          f"k = {args.lag_steps}; medians of {args.rounds} rounds")
    for kind, _ in kinds:
        wall, compiling, hits = (statistics.median(x[i] for x in runs[kind]) for i in range(3))
        print(f"{kind:5s}             wall {wall:6.1f} s   compiling {compiling:5.1f} s   cache hits {hits:.0f}")
    cold = statistics.median(x[1] for x in runs["cold"])
    warm = statistics.median(x[1] for x in runs["warm"])
    print(f"compiling warm / cold  {warm / cold:.2f}  ({cold - warm:.1f} s saved a run)")


if __name__ == "__main__":
    main()
