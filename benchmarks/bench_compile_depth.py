"""Compile time of one train step against depth, with the layers scanned and unrolled.

    .venv/bin/python benchmarks/bench_compile_depth.py [CONFIG] [--depths 4 8 16 32] [--set section.key=value ...]

For each depth (model.n_layers) and each of `model.scan_layers` true / false, traces, lowers and
compiles the jitted train step on abstract inputs (nothing is run), with JAX's persistent
compilation cache off, so every figure is a cold compile. Prints one table. Numbers, not
assertions: run it, quote it.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cold cache: before jax reads it at import

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from laggrow import model, train  # noqa: E402
from laggrow.config import load_run_config  # noqa: E402

jax.config.update("jax_enable_compilation_cache", False)


def compile_seconds(cfg) -> tuple[float, float]:
    """(trace + lower, compile) seconds of a fresh jit of the train step of `cfg`."""
    m, t = cfg.model, cfg.train
    optimizer = train.make_optimizer(t)
    state = jax.eval_shape(lambda p: train.init_state(p, optimizer), model.param_shapes(m))
    batch = jax.ShapeDtypeStruct((t.batch_size, cfg.data.seq_len + 1), jnp.int32)
    step = jax.jit(train.make_train_step(m, t), donate_argnums=0)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    traced = time.perf_counter()
    lowered.compile()
    return traced - start, time.perf_counter() - traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    print(f"config {args.config} {' '.join(args.overrides)}; devices {jax.devices()}; persistent cache off")
    print(f"{'layers':>6}  {'unrolled: trace+lower':>21} {'compile':>8} {'total':>7}  "
          f"{'scanned: trace+lower':>20} {'compile':>8} {'total':>7}  {'unrolled/scanned':>16}")
    for depth in args.depths:
        row = {}
        for scan in (False, True):
            cfg = load_run_config(args.config, [*args.overrides, f"model.n_layers={depth}",
                                                f"model.scan_layers={str(scan).lower()}"])
            row[scan] = compile_seconds(cfg)
        (ul, uc), (sl, sc) = row[False], row[True]
        print(f"{depth:>6}  {ul:>20.2f}s {uc:>7.2f}s {ul + uc:>6.2f}s  {sl:>19.2f}s {sc:>7.2f}s {sl + sc:>6.2f}s  "
              f"{(ul + uc) / (sl + sc):>15.2f}x", flush=True)


if __name__ == "__main__":
    main()
