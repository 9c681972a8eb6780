"""A decoder-only pre-LayerNorm Transformer LM in Flax NNX, and a functional façade over it.

Outside this module parameters are plain nested dicts of arrays. Per-layer parameters are stacked
on a leading layer axis, so growing in depth is array surgery along axis 0:

    embed/tokens        (V, D)
    pos/embedding       (S, D)          learned positions only
    blocks/ln1/scale    (L, D)          blocks/ln1/bias  (L, D)
    blocks/attn/w_qkv   (L, D, 3, H, Dh)
    blocks/attn/w_out   (L, H, Dh, D)
    blocks/ln2/scale    (L, D)          blocks/ln2/bias  (L, D)
    blocks/mlp/w_in     (L, D, F)
    blocks/mlp/w_out    (L, F, D)
    ln_f/scale          (D,)            ln_f/bias        (D,)
    head/w              (D, V)          untied embeddings only

Heads keep their own axis in the stored weights (width growth clones heads), but the forward
pass reshapes every weight to 2-D and runs the dense layers on (tokens, features) activations:
measured on these CPUs, 3-D activations made the backward pass much slower (docs/design.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from laggrow.config import ModelConfig

Params = dict

_STD = 0.02


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class LayerNorms(nnx.Module):
    """`n` stacked LayerNorms (or one when `n` is None)."""

    def __init__(self, d: int, n: int | None = None):
        lead = () if n is None else (n,)
        self.scale = nnx.Param(jnp.ones(lead + (d,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros(lead + (d,), jnp.float32))


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, D, H, Dh = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim
        self.w_qkv = _normal(rngs, (L, D, 3, H, Dh), _STD)
        # GPT-2's residual scaling: output projections shrink with depth so the stream stays O(1).
        self.w_out = _normal(rngs, (L, H, Dh, D), _STD / math.sqrt(2 * L))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, D, F = cfg.n_layers, cfg.d_model, cfg.d_ff
        self.w_in = _normal(rngs, (L, D, F), _STD)
        self.w_out = _normal(rngs, (L, F, D), _STD / math.sqrt(2 * L))


class Blocks(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.ln1 = LayerNorms(cfg.d_model, cfg.n_layers)
        self.attn = Attention(cfg, rngs)
        self.ln2 = LayerNorms(cfg.d_model, cfg.n_layers)
        self.mlp = MLP(cfg, rngs)


class Embedding(nnx.Module):
    def __init__(self, rows: int, d: int, rngs: nnx.Rngs, name: str):
        setattr(self, name, _normal(rngs, (rows, d), _STD))


class Head(nnx.Module):
    def __init__(self, d: int, v: int, rngs: nnx.Rngs):
        self.w = _normal(rngs, (d, v), _STD)


class TransformerLM(nnx.Module):
    """The NNX module. Its call runs the same pure `forward` the façade uses."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs, "tokens")
        if cfg.pos_emb == "learned":
            self.pos = Embedding(cfg.max_seq_len, cfg.d_model, rngs, "embedding")
        self.blocks = Blocks(cfg, rngs)
        self.ln_f = LayerNorms(cfg.d_model)
        if not cfg.tie_embeddings:
            self.head = Head(cfg.d_model, cfg.vocab_size, rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return forward(nnx.to_pure_dict(nnx.state(self, nnx.Param)), tokens, self.cfg)


# ---------------------------------------------------------------------------------------------
# Functional façade


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: ModelConfig, key: jax.Array) -> Params:
    return nnx.to_pure_dict(nnx.state(TransformerLM(cfg, nnx.Rngs(params=key)), nnx.Param))


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Fresh parameters of `cfg` as a plain nested dict of float32 arrays."""
    return _plain(_init(cfg, key))


def param_shapes(cfg: ModelConfig) -> Params:
    """The tree of `jax.ShapeDtypeStruct` that `init_params(cfg, ...)` returns, with no FLOPs."""
    return _plain(jax.eval_shape(_init, cfg, jax.random.key(0)))


def _plain(tree) -> Params:
    """NNX's pure dicts may be State-like mappings; growth and checkpoints want builtin dicts."""
    if hasattr(tree, "items"):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def apply(params: Params, tokens: jax.Array, cfg: ModelConfig, *, dropout: float = 0.0,
          key: jax.Array | None = None) -> jax.Array:
    """Logits (B, T, V) in float32 for int tokens (B, T). With `dropout` > 0 and a `key`,
    residual dropout is applied to every attention and MLP output (training only)."""
    return forward(params, tokens, cfg, dropout=dropout, key=key)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    lead = (1,) * (x.ndim - 1)  # explicit broadcasting: tests run with rank promotion = raise
    return (y * scale.reshape(lead + scale.shape) + bias.reshape(lead + bias.shape)).astype(x.dtype)


def rope(x: jax.Array) -> jax.Array:
    """Rotary position embedding on (B, T, H, Dh), rotating the two halves of each head."""
    _, t, _, dh = x.shape
    half = dh // 2
    freqs = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]  # (T, half)
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None, layer: int, site: int) -> jax.Array:
    if rate <= 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, 2 * layer + site), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def forward(params: Params, tokens: jax.Array, cfg: ModelConfig, *, dropout: float = 0.0,
            key: jax.Array | None = None) -> jax.Array:
    dtype = jnp.dtype(cfg.dtype)
    b, t = tokens.shape
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    blocks = params["blocks"]

    x = params["embed"]["tokens"][tokens]
    if cfg.pos_emb == "learned":
        x = x + params["pos"]["embedding"][:t][None]
    x = x.astype(dtype).reshape(b * t, d)  # 2-D activations: see the module docstring

    # An unrolled loop over the layer axis: on CPU it measured faster than lax.scan.
    n_layers = blocks["ln1"]["scale"].shape[0]
    for i in range(n_layers):
        y = layer_norm(x, blocks["ln1"]["scale"][i], blocks["ln1"]["bias"][i], cfg.ln_eps)
        qkv = y @ blocks["attn"]["w_qkv"][i].reshape(d, 3 * h * dh).astype(dtype)
        qkv = qkv.reshape(b, t, 3, h, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cfg.pos_emb == "rope":
            q, k = rope(q), rope(k)
        att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        att = att.reshape(b * t, h * dh) @ blocks["attn"]["w_out"][i].reshape(h * dh, d).astype(dtype)
        x = x + _dropout(att, dropout, key, i, 0)

        y = layer_norm(x, blocks["ln2"]["scale"][i], blocks["ln2"]["bias"][i], cfg.ln_eps)
        y = jax.nn.gelu(y @ blocks["mlp"]["w_in"][i].astype(dtype))
        x = x + _dropout(y @ blocks["mlp"]["w_out"][i].astype(dtype), dropout, key, i, 1)

    x = layer_norm(x, params["ln_f"]["scale"], params["ln_f"]["bias"], cfg.ln_eps)
    head = params["embed"]["tokens"].T if cfg.tie_embeddings else params["head"]["w"]
    logits = x @ head.astype(dtype)
    return logits.astype(jnp.float32).reshape(b, t, cfg.vocab_size)
