"""Causal self-attention: which implementation runs (`model.attention`), and the kernels.

`choose_attention` is a pure function of what the hardware and the model are, so what `auto`
means is unit-tested on any machine. The facts it needs (backend, compute capability, cuDNN)
are read from jax once, at trace time (`runtime`), because the backend is known only once jax
has started: a forced `cudnn` that cannot run raises `LaggrowError` when the step is traced.
`config.ModelConfig.validate` refuses, before that, what no machine could run (cudnn with
float32 compute, head sizes cuDNN never takes).

The constraints mirror those the installed jax enforces for cuDNN flash attention
(jax/_src/cudnn/fused_attention_stablehlo.py, `check_layout` and `check_is_flash_attention`,
jax 0.10): query/key/value in float16 or bfloat16; head dim a multiple of 8 and at most 128, or
256 on Hopper (compute capability 9.0) and later; an NVIDIA GPU (a CUDA platform, not ROCm) with
cuDNN. Flash attention in cuDNN needs Ampere (8.0) or newer. Sequence length: for a causal mask
without bias (ours) that jax version checks nothing, so any length is accepted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from laggrow.errors import LaggrowError

XLA, CUDNN = "xla", "cudnn"
CHOICES = ("auto", XLA, CUDNN)
CUDNN_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Runtime:
    """What `choose_attention` needs to know about the machine."""

    backend: str  # jax.default_backend(): cpu | gpu | tpu
    cuda: bool = False  # a CUDA (NVIDIA) platform, not ROCm
    compute_capability: tuple[int, int] | None = None
    cudnn_version: int | None = None


def cudnn_unsupported(rt: Runtime, dtype: str, head_dim: int, seq_len: int) -> str | None:
    """Why cuDNN flash attention cannot run for these shapes on this machine, or None if it can.
    `seq_len` is accepted for completeness: see the module docstring."""
    del seq_len
    if rt.backend != "gpu":
        return f"the {rt.backend} backend has no cuDNN (it needs an NVIDIA GPU)"
    if not rt.cuda:
        return "this GPU is not an NVIDIA (CUDA) one"
    if rt.cudnn_version is None:
        return "cuDNN was not found"
    if str(dtype) not in CUDNN_DTYPES:
        return f"{dtype} compute (cuDNN flash attention takes bfloat16 or float16)"
    cc = rt.compute_capability
    if cc is not None and cc < (8, 0):
        return f"compute capability {cc[0]}.{cc[1]} (cuDNN flash attention needs 8.0 or newer)"
    h_max = 256 if cc is not None and cc >= (9, 0) else 128
    if head_dim % 8 != 0 or head_dim > h_max:
        return f"head dim {head_dim} (cuDNN takes a multiple of 8, at most {h_max} on this GPU)"
    return None


def choose_attention(requested: str, rt: Runtime, dtype: str, head_dim: int, seq_len: int) -> str:
    """`xla` or `cudnn`: what `requested` (auto | xla | cudnn) means on `rt`. `auto` is cuDNN's
    fused flash attention where it runs (GPU, bfloat16/float16, supported head sizes), XLA's
    otherwise. A forced `cudnn` that cannot run raises LaggrowError naming the key."""
    if requested == XLA:
        return XLA
    why = cudnn_unsupported(rt, dtype, head_dim, seq_len)
    if requested == CUDNN:
        if why is not None:
            raise LaggrowError(f"model.attention: expected 'auto' or 'xla' here, got 'cudnn' ({why})")
        return CUDNN
    return XLA if why is not None else CUDNN


@functools.lru_cache(maxsize=1)
def runtime() -> Runtime:
    """The facts of this process's default jax backend (cached: the backend never changes)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return Runtime(backend)
    device = jax.devices()[0]
    cuda = "cuda" in str(getattr(device.client, "platform_version", "")).lower()
    cc = None
    if getattr(device, "compute_capability", None):
        major, minor = str(device.compute_capability).split(".")[:2]
        cc = (int(major), int(minor))
    cudnn = None
    try:  # jax's own check (cuDNN present) is private; a missing module means no cuDNN
        from jax._src.lib import cuda_versions

        cudnn = int(cuda_versions.cudnn_get_version()) if cuda_versions is not None else None
    except Exception:  # noqa: BLE001  (any failure here means: cannot use cuDNN)
        cudnn = None
    return Runtime(backend, cuda=cuda, compute_capability=cc, cudnn_version=cudnn)


# ---------------------------------------------------------------------------------------------
# Kernels on (B, T, H, Dh) queries and (B, T, K, Dh) keys / values, causal. K divides H: with
# K < H each key/value head serves H / K consecutive query heads (grouped-query attention, the
# convention of Hugging Face's repeat_kv and of jax.nn.dot_product_attention).


# a large finite negative (not -inf): a row is never all masked here, and no inf - inf NaNs
_MASKED = -0.7 * float(np.finfo(np.float32).max)


def causal_attention_einsum(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax attention written out: the query scaled before QK^T, a (T, T) additive mask
    broadcast over batch and heads, the softmax in float32; grouped-query attention when k and v
    have fewer heads than q. The same arithmetic as
    `jax.nn.dot_product_attention`'s XLA path (to float rounding: that one scales the scores and
    masks with a (B, H, T, T) boolean it builds with `ones_like`), and faster on CPU; see
    `attention_fn` for the figures."""
    return _softmax_attention(q, k, v, lambda t, s: jnp.tril(jnp.ones((t, s), bool)))


def attention_at(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array) -> jax.Array:
    """Attention of T queries at `positions` ((T,) integers) over S cached keys and values, key s
    being position s: query t reads keys 0..positions[t] (laggrow.decode's cache; slots past a
    query's position, written or not, are masked). The arithmetic of `causal_attention_einsum`,
    which is this with positions 0..T-1 and S = T."""
    return _softmax_attention(q, k, v, lambda t, s: jnp.arange(s)[None, :] <= positions[:, None])


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, visible) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + mask) v for q (B, T, H, Dh) and k, v (B, S, K, Dh), where
    `visible(T, S)` is the (T, S) boolean of what each query may read; with K < H, query head j
    reads key/value head j // (H / K), with no copy of k and v."""
    b, t, h, dh = q.shape
    s, kv = k.shape[1], k.shape[2]
    q = q * jnp.asarray(1.0 / np.sqrt(dh), q.dtype)
    bias = jnp.where(visible(t, s), 0.0, _MASKED)
    if kv == h:
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores + bias[None, None].astype(jnp.float32), axis=-1).astype(v.dtype)
        return jnp.einsum("bhts,bshd->bthd", probs, v)
    # grouped-query attention: query head j reads key/value head j // (h / kv), with no copy of k, v
    qg = q.reshape(b, t, kv, h // kv, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias[None, None, None].astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, dh)


def causal_attention_xla(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def causal_attention_cudnn(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def attention_fn(requested: str, dtype: str, head_dim: int, seq_len: int, rt: Runtime | None = None):
    """The kernel `requested` resolves to on `rt` (this process's backend by default).

    XLA on CPU is the written-out `causal_attention_einsum`: measured on the 2-core CPU in one
    process, alternating rounds, fwd+bwd of attention alone took 0.69x the time of
    `jax.nn.dot_product_attention` at configs/small.yaml's shape (B16 T128 H4 Dh32) and 0.89x at
    DESIGN's reference (B32 T128 H4 Dh64); small.yaml's whole train step 0.939x (11 rounds, range
    0.85-0.98), the reference's 0.994x (no change measurable); docs/design.md. On accelerators
    XLA's own path (`jax.nn.dot_product_attention(implementation="xla")`) is kept."""
    rt = runtime() if rt is None else rt
    choice = choose_attention(requested, rt, dtype, head_dim, seq_len)
    if choice == CUDNN:
        return causal_attention_cudnn
    return causal_attention_einsum if rt.backend == "cpu" else causal_attention_xla
