"""Decoder-only pre-norm Transformer LMs (`gpt` and `llama`, `model.arch`) as plain functions over
a pytree of parameters: `init_params`, `apply` and the pieces decoding reuses.

Why plain functions and no module library (such as Flax NNX):
the parameters *are* the interface. Growth manipulates the stacked tree directly (depth growth is
array surgery along the layer axis, in numpy on the host), checkpoints, the pool's vmap over a
leading candidate axis, FSDP shardings and Hugging Face import / export all read and write the
same nested dict; a module object would have to be flattened to that dict at every one of those
boundaries and would own nothing they need. So this module owns the tree's layout and the math,
and nothing here holds state; Flax is not a dependency.

Parameters are plain nested dicts of arrays everywhere. Per-layer parameters are
stacked on a leading layer axis, so growing in depth is array surgery along axis 0. gpt:

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

llama (K = n_kv_heads), one array per Hugging Face tensor, each `[out, in]` matrix of HF stored
transposed to `[in, out]` with its head axis split out, so import and export are a transpose and
a reshape per tensor (docs/design.md, "Two architectures"):

    embed/tokens        (V, D)          model.embed_tokens.weight
    blocks/norm1/scale  (L, D)          model.layers.{i}.input_layernorm.weight
    blocks/attn/w_q     (L, D, H, Dh)   self_attn.q_proj.weight (H*Dh, D)
    blocks/attn/w_k     (L, D, K, Dh)   self_attn.k_proj.weight (K*Dh, D)
    blocks/attn/w_v     (L, D, K, Dh)   self_attn.v_proj.weight (K*Dh, D)
    blocks/attn/b_q     (L, H, Dh)      self_attn.q_proj.bias   qkv_bias only (b_k, b_v: (L, K, Dh))
    blocks/attn/w_o     (L, H, Dh, D)   self_attn.o_proj.weight (D, H*Dh)
    blocks/norm2/scale  (L, D)          post_attention_layernorm.weight
    blocks/mlp/w_gate   (L, D, F)       mlp.gate_proj.weight (F, D)
    blocks/mlp/w_up     (L, D, F)       mlp.up_proj.weight (F, D)
    blocks/mlp/w_down   (L, F, D)       mlp.down_proj.weight (D, F)
    norm_f/scale        (D,)            model.norm.weight
    head/w              (D, V)          lm_head.weight (V, D), untied embeddings only

Heads keep their own axis in the stored weights (width growth clones heads), but the forward
pass reshapes every weight to 2-D and runs the dense layers on (tokens, features) activations:
measured on these CPUs, 3-D activations made the backward pass much slower (docs/design.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from laggrow import attention
from laggrow.config import ModelConfig

Params = dict

_STD = 0.02


def _init(cfg: ModelConfig, key: jax.Array) -> Params:
    """Fresh parameters: weights N(0, 0.02) (output projections 0.02 / sqrt(2 L), GPT-2's residual
    scaling, which keeps the stream O(1)), norms' scales one and biases zero. The i-th weight drawn
    reads `fold_in(key, i)`, in the order embedding, positions, blocks (attention, then MLP), head:
    a seed's init is part of a run's identity, so this order is fixed (tests/test_model.py pins its
    values)."""
    draws = iter(range(1 << 30))
    L, D, H, Dh, F, V = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    residual = _STD / math.sqrt(2 * L)

    def normal(shape: tuple[int, ...], std: float = _STD) -> jax.Array:
        return std * jax.random.normal(jax.random.fold_in(key, next(draws)), shape, jnp.float32)

    def ones(*shape: int) -> jax.Array:
        return jnp.ones(shape, jnp.float32)

    def zeros(*shape: int) -> jax.Array:
        return jnp.zeros(shape, jnp.float32)

    params: Params = {"embed": {"tokens": normal((V, D))}}
    if cfg.pos_emb == "learned":
        params["pos"] = {"embedding": normal((cfg.max_seq_len, D))}
    if cfg.arch == "llama":
        K = cfg.kv_heads
        attn = {"w_q": normal((L, D, H, Dh)), "w_k": normal((L, D, K, Dh)), "w_v": normal((L, D, K, Dh)),
                "w_o": normal((L, H, Dh, D), residual)}
        if cfg.qkv_bias:
            attn.update(b_q=zeros(L, H, Dh), b_k=zeros(L, K, Dh), b_v=zeros(L, K, Dh))
        mlp = {"w_gate": normal((L, D, F)), "w_up": normal((L, D, F)), "w_down": normal((L, F, D), residual)}
        params["blocks"] = {"norm1": {"scale": ones(L, D)}, "attn": attn, "norm2": {"scale": ones(L, D)}, "mlp": mlp}
        params["norm_f"] = {"scale": ones(D)}
    else:
        attn = {"w_qkv": normal((L, D, 3, H, Dh)), "w_out": normal((L, H, Dh, D), residual)}
        mlp = {"w_in": normal((L, D, F)), "w_out": normal((L, F, D), residual)}
        params["blocks"] = {"ln1": {"scale": ones(L, D), "bias": zeros(L, D)}, "attn": attn,
                            "ln2": {"scale": ones(L, D), "bias": zeros(L, D)}, "mlp": mlp}
        params["ln_f"] = {"scale": ones(D), "bias": zeros(D)}
    if not cfg.tie_embeddings:
        params["head"] = {"w": normal((D, V))}
    return params


_init_jit = jax.jit(_init, static_argnums=0)


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Fresh parameters of `cfg` as a plain nested dict of float32 arrays."""
    return _init_jit(cfg, key)


def param_shapes(cfg: ModelConfig) -> Params:
    """The tree of `jax.ShapeDtypeStruct` that `init_params(cfg, ...)` returns, with no FLOPs."""
    return jax.eval_shape(functools.partial(_init, cfg), jax.random.key(0))


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


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """Hugging Face's LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) in float32, cast back to the
    compute dtype, then times the scale."""
    x32 = x.astype(jnp.float32)
    y = (x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)).astype(x.dtype)
    lead = (1,) * (x.ndim - 1)
    return y * scale.reshape(lead + scale.shape).astype(x.dtype)


def rope(x: jax.Array, theta: float = 10000.0, positions: jax.Array | None = None) -> jax.Array:
    """Rotary position embedding on (B, T, H, Dh), rotating the two halves of each head (Hugging
    Face's rotate-half convention: dims i and i + Dh/2 pair up, inv_freq = theta^(-2i/Dh)). Token t
    is at position t, or at `positions[t]` ((T,) integers: a cached decoding step, laggrow.decode)."""
    _, t, _, dh = x.shape
    half = dh // 2
    freqs = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    pos = jnp.arange(t, dtype=jnp.float32) if positions is None else positions.astype(jnp.float32)
    angles = pos[:, None] * freqs[None, :]  # (T, half)
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None, layer, site: int) -> jax.Array:
    """Residual dropout keyed by `fold_in(key, 2 * layer + site)`; `layer` may be traced (the
    scanned loop carries it), so scanned and unrolled models draw the same bits."""
    if rate <= 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, 2 * layer + site), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


SCAN_CHOICES = ("auto", True, False)


def choose_scan(requested, backend: str) -> bool:
    """Whether the layer loop is a `lax.scan` (True) or unrolled (False). `auto` unrolls on CPU,
    where the unrolled loop measured faster per step (docs/design.md, "Scan over layers"), and
    scans on GPU / TPU, as maxtext does by default (`scan_layers: True` in its base.yml): one
    compiled layer body, compile time flat in depth. Not measured here (no accelerator)."""
    if requested == "auto":
        return backend != "cpu"
    return bool(requested)


# A layer is two halves around the attention kernel, so the training forward pass (`hidden`, whole
# sequences) and cached decoding (laggrow.decode, keys and values kept from earlier steps) run the
# same code: `attention_inputs` (norm, projections, RoPE) gives q (B, T, H, Dh) and k, v (B, T, K,
# Dh); the caller attends; `attention_output` adds the output projection and the MLP. Both work on
# 2-D (B*T, D) activations; `layer` holds one layer's weights, `positions` the tokens' positions
# ((T,) integers; None: 0..T-1).


def _gpt_attention_inputs(x: jax.Array, layer: Params, cfg: ModelConfig, b: int, t: int,
                          positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    dtype = jnp.dtype(cfg.dtype)
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    y = layer_norm(x, layer["ln1"]["scale"], layer["ln1"]["bias"], cfg.ln_eps)
    qkv = y @ layer["attn"]["w_qkv"].reshape(d, 3 * h * dh).astype(dtype)
    qkv = qkv.reshape(b, t, 3, h, dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cfg.pos_emb == "rope":
        q, k = rope(q, cfg.rope_theta, positions), rope(k, cfg.rope_theta, positions)
    return q, k, v


def _gpt_attention_output(x: jax.Array, att: jax.Array, layer: Params, i, cfg: ModelConfig, b: int, t: int,
                          dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """The pre-LN layer's rest: output projection, residual, LayerNorm, GELU MLP, residual."""
    dtype = jnp.dtype(cfg.dtype)
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    att = att.reshape(b * t, h * dh) @ layer["attn"]["w_out"].reshape(h * dh, d).astype(dtype)
    x = x + _dropout(att, dropout, key, i, 0)

    y = layer_norm(x, layer["ln2"]["scale"], layer["ln2"]["bias"], cfg.ln_eps)
    y = jax.nn.gelu(y @ layer["mlp"]["w_in"].astype(dtype))
    return x + _dropout(y @ layer["mlp"]["w_out"].astype(dtype), dropout, key, i, 1)


def _llama_attention_inputs(x: jax.Array, layer: Params, cfg: ModelConfig, b: int, t: int,
                            positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RMSNorm, q with n_heads heads and k, v with kv_heads heads (query head j reads KV head
    j // (n_heads / kv_heads), as Hugging Face's repeat_kv), biases, then RoPE."""
    dtype = jnp.dtype(cfg.dtype)
    d, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    attn = layer["attn"]

    def project(y: jax.Array, name: str, heads: int) -> jax.Array:
        out = y @ attn[f"w_{name}"].reshape(d, heads * dh).astype(dtype)
        if cfg.qkv_bias:
            out = out + attn[f"b_{name}"].reshape(1, heads * dh).astype(dtype)
        return out.reshape(b, t, heads, dh)

    y = rms_norm(x, layer["norm1"]["scale"], cfg.ln_eps)
    q, k, v = project(y, "q", h), project(y, "k", kv), project(y, "v", kv)
    q, k = rope(q, cfg.rope_theta, positions), rope(k, cfg.rope_theta, positions)
    return q, k, v


def _llama_attention_output(x: jax.Array, att: jax.Array, layer: Params, i, cfg: ModelConfig, b: int, t: int,
                            dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """The Llama layer's rest: o_proj, residual, RMSNorm, SwiGLU, residual."""
    dtype = jnp.dtype(cfg.dtype)
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    att = att.reshape(b * t, h * dh) @ layer["attn"]["w_o"].reshape(h * dh, d).astype(dtype)
    x = x + _dropout(att, dropout, key, i, 0)

    y = rms_norm(x, layer["norm2"]["scale"], cfg.ln_eps)
    mlp = layer["mlp"]
    y = jax.nn.silu(y @ mlp["w_gate"].astype(dtype)) * (y @ mlp["w_up"].astype(dtype))
    return x + _dropout(y @ mlp["w_down"].astype(dtype), dropout, key, i, 1)


def layer_halves(cfg: ModelConfig):
    """(attention_inputs, attention_output) of `cfg.arch`'s layer (see above)."""
    if cfg.arch == "llama":
        return _llama_attention_inputs, _llama_attention_output
    return _gpt_attention_inputs, _gpt_attention_output


def _block(x: jax.Array, layer: Params, i, cfg: ModelConfig, attend, b: int, t: int,
           dropout: float, key: jax.Array | None) -> jax.Array:
    """One layer of `cfg.arch` on 2-D (B*T, D) activations, the whole sequence attended by
    `attend` (causal; k and v with kv_heads heads)."""
    inputs, output = layer_halves(cfg)
    q, k, v = inputs(x, layer, cfg, b, t)
    return output(x, attend(q, k, v), layer, i, cfg, b, t, dropout, key)


def embed(params: Params, tokens: jax.Array, cfg: ModelConfig, positions: jax.Array | None = None) -> jax.Array:
    """The input of the first layer, (B*T, D) in the compute dtype: token embeddings, plus learned
    position embeddings of positions 0..T-1 (or `positions`, (T,) integers) when the model has them."""
    b, t = tokens.shape
    x = params["embed"]["tokens"][tokens]
    if cfg.pos_emb == "learned":
        table = params["pos"]["embedding"]
        x = x + (table[:t] if positions is None else table[positions])[None]
    return x.astype(jnp.dtype(cfg.dtype)).reshape(b * t, cfg.d_model)  # 2-D: see the module docstring


def final_norm(params: Params, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The norm after the last layer (gpt's LayerNorm, llama's RMSNorm)."""
    if cfg.arch == "llama":
        return rms_norm(x, params["norm_f"]["scale"], cfg.ln_eps)
    return layer_norm(x, params["ln_f"]["scale"], params["ln_f"]["bias"], cfg.ln_eps)


def hidden(params: Params, tokens: jax.Array, cfg: ModelConfig, *, dropout: float = 0.0,
           key: jax.Array | None = None) -> jax.Array:
    """The final (normed) hidden states (B*T, D) in the compute dtype: what the head multiplies.
    The loss can take them in chunks instead of whole logits (`train.loss_fn`)."""
    b, t = tokens.shape
    blocks = params["blocks"]
    x = embed(params, tokens, cfg)

    attend = attention.attention_fn(cfg.attention, cfg.dtype, cfg.head_dim, t)
    block = functools.partial(_block, cfg=cfg, attend=attend, b=b, t=t, dropout=dropout, key=key)
    n_layers = jax.tree.leaves(blocks)[0].shape[0]
    if choose_scan(cfg.scan_layers, attention.runtime().backend):
        # the layer index rides along as a scanned input, so dropout folds in the same index
        def body(x, layer_and_index):
            layer, i = layer_and_index
            return block(x, layer, i), None

        x, _ = jax.lax.scan(body, x, (blocks, jnp.arange(n_layers, dtype=jnp.int32)))
    else:
        for i in range(n_layers):
            x = block(x, jax.tree.map(lambda w, i=i: w[i], blocks), i)
    return final_norm(params, x, cfg)


def head_weight(params: Params, cfg: ModelConfig) -> jax.Array:
    """The output projection (D, V) in the compute dtype (the embedding's transpose when tied)."""
    head = params["embed"]["tokens"].T if cfg.tie_embeddings else params["head"]["w"]
    return head.astype(jnp.dtype(cfg.dtype))


def forward(params: Params, tokens: jax.Array, cfg: ModelConfig, *, dropout: float = 0.0,
            key: jax.Array | None = None) -> jax.Array:
    b, t = tokens.shape
    logits = hidden(params, tokens, cfg, dropout=dropout, key=key) @ head_weight(params, cfg)
    return logits.astype(jnp.float32).reshape(b, t, cfg.vocab_size)
