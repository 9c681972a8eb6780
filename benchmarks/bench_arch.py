"""The Llama-family train step against the GPT-style step of the same size, in one process.

    .venv/bin/python benchmarks/bench_arch.py [CONFIG] [--n-kv-heads K] [--rounds 6] [--steps 5] [--set ...]

From one run config (default configs/small.yaml, a gpt model) it builds two models of the same
depth, width, heads, batch and sequence length: the config's `gpt` model (LayerNorm, GELU MLP of
width d_ff, fused q/k/v) and a `llama` one (RMSNorm, SwiGLU of width round(2/3 d_ff) so that its
three MLP matrices hold as many weights as gpt's two, rotate-half RoPE, `--n-kv-heads` key/value
heads, default one per query head). Both jitted train steps (`laggrow.train.jit_train_step`) are
timed in alternating rounds on the same random batch, and the ratio is taken round by round: these
machines are shared and their speed drifts, so a ratio never mixes two speeds. Prints each model's
parameter count, compile time, median step, tokens/s, and the llama / gpt step-time ratio (median
and range over rounds). Numbers, not assertions: run it, quote it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np
from bench_train import timed  # benchmarks/bench_train.py

from laggrow import model, train
from laggrow.config import load_run_config


def llama_twin(m, n_kv_heads: int):
    """The llama ModelConfig of gpt ModelConfig `m`'s size: same layers, width, heads, vocabulary
    and dtype, a SwiGLU of width round(2/3 d_ff) (parameter-matched MLP), RoPE positions."""
    return dataclasses.replace(m, arch="llama", pos_emb="rope", d_ff=round(2 * m.d_ff / 3),
                               n_kv_heads=n_kv_heads, qkv_bias=False)


def stepper(m, t, batch):
    """(compile seconds, one_step): one_step runs and blocks on one train step of model `m`."""
    state = {"s": train.init_state(model.init_params(m, jax.random.key(0)), train.make_optimizer(t))}
    step = train.jit_train_step(m, t)
    c = time.perf_counter()
    state["s"], out = step(state["s"], batch)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - c

    def one_step():
        state["s"], out = step(state["s"], batch)
        jax.block_until_ready(out)

    return compile_s, one_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/small.yaml")
    parser.add_argument("--n-kv-heads", type=int, default=0, help="the llama model's key/value heads (0: n_heads)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    cfg = load_run_config(args.config, args.overrides)
    gpt, t = cfg.model, cfg.train
    if gpt.arch != "gpt":
        parser.error(f"{args.config}: expected a model.arch 'gpt' config (its llama twin is built here), "
                     f"got {gpt.arch!r}")
    llama = llama_twin(gpt, args.n_kv_heads)
    batch = np.random.default_rng(0).integers(0, gpt.vocab_size, (t.batch_size, cfg.data.seq_len + 1),
                                              dtype=np.int32)
    tokens = t.batch_size * cfg.data.seq_len
    models = {"gpt": gpt, "llama": llama}
    compiled = {name: stepper(m, t, batch) for name, m in models.items()}

    rounds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (_, one_step) in compiled.items():
            rounds[name].append(timed(one_step, args.steps))
    ratios = sorted(ll / g for ll, g in zip(rounds["llama"], rounds["gpt"], strict=True))

    print(f"config            {args.config} {' '.join(args.overrides)}")
    print(f"shape             {gpt.n_layers} layers, d_model {gpt.d_model}, heads {gpt.n_heads}, vocab "
          f"{gpt.vocab_size}, {gpt.dtype}; batch {t.batch_size} x seq {cfg.data.seq_len}")
    print(f"devices           {jax.devices()}")
    for name, m in models.items():
        step_s = statistics.median(rounds[name])
        detail = (f"GELU d_ff {m.d_ff}, {m.pos_emb} positions" if name == "gpt" else
                  f"SwiGLU d_ff {m.d_ff}, {m.kv_heads} kv heads, rope theta {m.rope_theta:g}")
        print(f"{name:<6}            {m.n_params():,} params ({detail}); compile {compiled[name][0]:.2f} s; "
              f"step {step_s * 1e3:.1f} ms; {tokens / step_s:,.0f} tokens/s")
    print(f"llama / gpt step  {statistics.median(ratios):.2f}x (median of {args.rounds} per-round ratios of the "
          f"best of {args.steps} steps; range {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")


if __name__ == "__main__":
    main()
