"""Bounds on what a config may ask of the machine, checked before anything is allocated.

A typo (`model.n_layers=100000`, `train.batch_size=1000000000`, a bootstrap of 10^8 resamples)
must cost one line, not the machine's memory or an hour of hanging. Everything here is integer
arithmetic on the config: no jax, no numpy, so the checks cost nothing and run first.

The estimates are deliberately lower bounds of what the computation must hold at once (the
arrays the backward pass keeps, not XLA's temporaries): they refuse only what surely cannot fit,
so a config near the limit is left to try. configs/gpu.yaml, meant for one accelerator, estimates
about 18 GiB and so still passes on a 23 GiB CPU machine, where it would merely be slow.

The memory compared with is the machine's physical memory, or a cgroup's limit when one is
lower, or `LAGGROW_MEMORY` (bytes, or with a K/M/G/T suffix) when set: on a shared machine a user
can say how much of it laggrow may count on. On an accelerator the host's memory is compared
with, which is usually larger than the device's: the check catches typos, not near misses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from laggrow.errors import LaggrowError

# A run config is taken as it comes (`cfg.model`, `cfg.data`, `cfg.train`): config.py calls in
# here from RunConfig.validate(), so importing it back, even for annotations, would be a cycle.
RunConfig = Any

MEMORY_ENV = "LAGGROW_MEMORY"
INT32_MAX = 2**31 - 1  # the train step counter is an int32
SEED_MAX = 2**32 - 1  # jax.random.key and numpy's generators take uint32 seeds (2**32 wraps to 0)
MAX_BOOTSTRAP = 100_000  # percentile intervals settle long before; a typo beyond is refused
MAX_VOCAB = 2**20  # data.bpe_vocab_size: four times the largest vocabularies in use
MAX_EVAL_POINTS = 100_000  # evaluations of a pool's curves (each one a pass over the eval set)

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


# ---- the machine ------------------------------------------------------------------------------


def available_memory() -> int:
    """Bytes laggrow may count on: LAGGROW_MEMORY, else the smaller of physical memory and a
    cgroup limit."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
        if not match or int(match.group(1)) == 0:
            raise LaggrowError(f"{MEMORY_ENV}={text!r}: expected a number of bytes > 0, e.g. 8G or 8589934592")
        return int(match.group(1)) * _UNITS[match.group(2).upper()]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in _CGROUP_LIMITS:
        try:
            value = limit.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and 0 < int(value) < total:
            total = int(value)
    return total


def _have(n_bytes: int) -> str:
    if os.environ.get(MEMORY_ENV, "").strip():
        return f"{MEMORY_ENV} allows {human(n_bytes)}"
    return f"this machine has {human(n_bytes)}"


def human(n_bytes: float) -> str:
    """1.2 TiB, 23 GiB, 512 MiB: what a person reads at a glance."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            value = n_bytes / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{int(n_bytes)} B"


# ---- a training run -----------------------------------------------------------------------------


def layer_values_per_token(m: Any) -> int:
    """Values a token keeps in one layer for the backward pass (`m` a ModelConfig). gpt: the
    residual stream twice, two LayerNorm outputs, q/k/v, the attention output (8 d_model) and the
    MLP's hidden units and their GELU (2 d_ff). llama: the same stream, norms, q and attention
    output (6 d_model), k and v (2 kv_heads * head_dim under grouped-query attention) and the
    SwiGLU's gate, up, SiLU(gate) and product (4 d_ff)."""
    if m.arch == "llama":
        return 6 * m.d_model + 2 * m.kv_heads * m.head_dim + 4 * m.d_ff
    return 8 * m.d_model + 2 * m.d_ff


def training_bytes(cfg: RunConfig, candidates: int = 1, together: int = 1) -> tuple[int, int, int]:
    """(total, state, activations) in bytes: a lower bound of what training `cfg` holds at once.

    State: float32 params, AdamW's two moments (12 bytes a parameter) for every candidate, and
    the gradients (4 more) of the `together` candidates in one step. Activations, per candidate
    in the step: what the backward pass keeps of each layer (`layer_values_per_token`) and the
    (batch, heads, T, T) attention probabilities, in the compute dtype, plus the float32 logits
    and their gradient; the held-out windows and one evaluation batch's logits.
    """
    m, d, t = cfg.model, cfg.data, cfg.train
    width = 2 if m.dtype == "bfloat16" else 4
    n_params = m.n_params()
    tokens = t.batch_size * d.seq_len
    per_layer = tokens * layer_values_per_token(m) * width + t.batch_size * m.n_heads * d.seq_len**2 * width
    logits = tokens * m.vocab_size * (4 + 4)
    eval_windows = d.eval_batches * d.eval_batch_size * (d.seq_len + 1) * (4 + 8)  # tokens, int64 index
    eval_step = d.eval_batch_size * d.seq_len * m.vocab_size * 4 \
        + d.eval_batch_size * m.n_heads * d.seq_len**2 * width
    state = candidates * 12 * n_params + together * 4 * n_params
    activations = together * (m.n_layers * per_layer + logits + eval_step) + eval_windows
    return state + activations, state, activations


def check_training_fits(cfg: RunConfig, where: str = "config", candidates: int = 1, together: int = 1) -> None:
    """Refuse, in one line naming the sizes, a run (or a pool of runs) that cannot fit in memory."""
    total, state, activations = training_bytes(cfg, candidates, together)
    have = available_memory()
    if total <= have:
        return
    m, d, t = cfg.model, cfg.data, cfg.train
    sizes = (f"model.n_layers={m.n_layers}, model.d_model={m.d_model}, model.d_ff={m.d_ff}, "
             f"model.vocab_size={m.vocab_size}, train.batch_size={t.batch_size}, data.seq_len={d.seq_len}")
    pool = f" for {candidates} candidates, {together} at a time," if candidates > 1 else ""
    advice = "fewer candidates or a smaller chunk_size" if candidates > 1 else "a model and batch that fit"
    raise LaggrowError(
        f"{where}: training{pool} needs about {human(total)} of memory (params and AdamW state {human(state)}, "
        f"activations {human(activations)}) with {sizes}; {_have(have)}; "
        f"expected {advice}")


def eval_bytes(cfg: RunConfig) -> int:
    """A lower bound of what evaluating `cfg`'s model on its held-out windows holds (`laggrow
    eval`): the restored train state (params and AdamW's moments, 12 bytes a parameter), the
    windows, and one evaluation batch's activations of a layer, attention probabilities and
    float32 logits."""
    m, d = cfg.model, cfg.data
    width = 2 if m.dtype == "bfloat16" else 4
    eval_windows = d.eval_batches * d.eval_batch_size * (d.seq_len + 1) * (4 + 8)
    tokens = d.eval_batch_size * d.seq_len
    step = tokens * (layer_values_per_token(m) * width + m.vocab_size * 4) \
        + d.eval_batch_size * m.n_heads * d.seq_len**2 * width
    return 12 * m.n_params() + eval_windows + step


def check_eval_fits(cfg: RunConfig, where: str = "--set") -> None:
    """Refuse, in one line naming the sizes, an evaluation that cannot fit in memory."""
    need, have = eval_bytes(cfg), available_memory()
    if need > have:
        d = cfg.data
        raise LaggrowError(f"{where}: evaluating needs about {human(need)} of memory with data.eval_batches="
                           f"{d.eval_batches}, data.eval_batch_size={d.eval_batch_size}, data.seq_len={d.seq_len}; "
                           f"{_have(have)}; expected fewer or smaller windows")


# ---- a pool's chunk -------------------------------------------------------------------------------

# `chunk_size: auto` counts on this fraction of the device's memory: the estimate is a lower bound
# (XLA's temporaries and the allocator's fragmentation are not in it), so half is left for them.
AUTO_CHUNK_FRACTION = 0.5


def pool_chunk_bytes(cfg: RunConfig, candidates: int) -> tuple[int, int]:
    """(fixed, per_candidate) bytes of training a pool of `candidates` of `cfg`: the states of the
    whole pool (and the held-out windows), and what each candidate trained in the same step adds
    (its gradient and activations), so that `training_bytes(cfg, candidates, k)` is
    fixed + k * per_candidate."""
    fixed = training_bytes(cfg, candidates, together=0)[0]
    return fixed, training_bytes(cfg, candidates, together=1)[0] - fixed


def chunk_that_fits(per_candidate: int, fixed: int, memory: int, candidates: int,
                    fraction: float = AUTO_CHUNK_FRACTION) -> int:
    """The most candidates, in [1, candidates], to train in one step when the pool holds `fixed`
    bytes and each candidate of the step `per_candidate` more, within `fraction` of `memory`
    bytes. All of them when they fit (a pool that fits trains as one program, exactly as with
    chunk_size 0); at least one, as one at a time is the least a pool can do (whether that fits at
    all is `check_training_fits`'s to refuse)."""
    if candidates < 1 or per_candidate < 1 or memory < 1:
        raise ValueError(f"chunk_that_fits: expected positive sizes, got per_candidate={per_candidate}, "
                         f"memory={memory}, candidates={candidates}")
    budget = int(memory * fraction) - fixed
    return max(1, min(candidates, budget // per_candidate))


# ---- the bootstrap of `laggrow correlate` ---------------------------------------------------------


def bootstrap_bytes(n_boot: int, strategies: int, steps: int, seeds: int) -> int:
    """A lower bound of what analysis.correlation's bootstrap allocates: the resampled means
    (strategies x n_boot x steps float64), one strategy's gathered seed draws, and at one step
    the resampled units, their ranks and Kendall's pairwise sign matrices (n_boot x S x S)."""
    per_resample = strategies * steps + seeds * (steps + 1) + 4 * strategies * strategies + 16 * strategies
    return 8 * n_boot * per_resample


def check_bootstrap(n_boot: int, strategies: int, steps: int, seeds: int, what: str = "bootstrap") -> None:
    """Refuse a bootstrap beyond MAX_BOOTSTRAP resamples, or one that cannot fit in memory."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or not 0 <= n_boot <= MAX_BOOTSTRAP:
        raise LaggrowError(f"{what}: expected a number of resamples in [0, {MAX_BOOTSTRAP}], got {n_boot!r}")
    need, have = bootstrap_bytes(n_boot, strategies, steps, seeds), available_memory()
    if need > have:
        fits = have // max(bootstrap_bytes(1, strategies, steps, seeds), 1)
        raise LaggrowError(f"{what}: {n_boot} resamples of {strategies} strategies x {steps} steps need about "
                           f"{human(need)} of memory, {_have(have)}; expected at most {fits}")


# ---- when the estimate was not enough ---------------------------------------------------------------

# XLA reports a failed allocation as a JaxRuntimeError whose status code (the word before the
# colon of its message, the one structured field it exposes to Python) is RESOURCE_EXHAUSTED.
_EXHAUSTED = "RESOURCE_EXHAUSTED"


def out_of_memory_message(err: BaseException) -> str | None:
    """The one line for a real out-of-memory error raised by XLA (the estimates here are lower
    bounds, and LAGGROW_MEMORY may overstate the machine): what ran out, and what to lower. None
    for any other exception. Does not import jax: an error from it means it is imported."""
    import sys

    jax = sys.modules.get("jax")
    if jax is None or not isinstance(err, jax.errors.JaxRuntimeError):
        return None
    code, _, detail = str(err).partition(":")
    if code.strip() != _EXHAUSTED:
        return None
    try:
        where = f"{jax.devices()[0].platform} device"
    except RuntimeError:
        where = "device"
    detail = " ".join(detail.split())[:160] or "an allocation failed"
    setting = os.environ.get(MEMORY_ENV, "").strip()
    told = (f"; {MEMORY_ENV}={setting} may overstate this machine's memory: lower it to what is free, and the "
            "estimate refuses what cannot fit before it starts") if setting else ""
    return (f"out of memory on the {where} ({detail}); expected a run that fits: lower train.batch_size, the "
            f"model's size or a pool's chunk_size{told}")
