"""Hugging Face's Llama family and laggrow's `llama` architecture, both ways: the config keys and
the tensors (docs/design.md, "Two architectures, one layout", has the table this follows).

Pure functions on dicts and numpy arrays: no jax, no torch, no transformers, no files.

What laggrow's llama block can represent is exactly Hugging Face's `LlamaForCausalLM` without
biases other than q/k/v (Qwen2's), with default RoPE, SiLU, head_dim = hidden / heads, and full
causal attention. A config.json asking for anything else is refused in one line naming its key,
rather than imported into a model that would compute something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from laggrow.config import ModelConfig
from laggrow.config_engine import shown
from laggrow.errors import LaggrowError

SUPPORTED = ("llama", "mistral", "qwen2")

# transformers' own defaults (5.x classes) for the keys a config.json may leave out
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"num_key_value_heads": None, "max_position_embeddings": 2048, "sliding_window": None},
    "mistral": {"num_key_value_heads": 8, "max_position_embeddings": 4096 * 32, "sliding_window": 4096},
    "qwen2": {"num_key_value_heads": 32, "max_position_embeddings": 32768, "sliding_window": None},
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# keys of mixture-of-experts configs: their feed-forward layers are not one SwiGLU
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
             "n_shared_experts", "shared_expert_intermediate_size")


def _refuse(where: str, key: str, value: Any, expected: str) -> LaggrowError:
    return LaggrowError(f"{where}: {key} {shown(value)} cannot be represented by laggrow (expected {expected})")


def _int(hf: dict, key: str, where: str, default: Any = None) -> int:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaggrowError(f"{where}: {key} is {shown(value)} (expected a positive integer)")
    return value


def rope_theta(hf: dict, where: str) -> float:
    """RoPE's base, refusing any RoPE but the default one: transformers 5 writes
    `rope_parameters: {rope_type, rope_theta}`, older configs `rope_theta` and `rope_scaling`."""
    theta = hf.get("rope_theta", 10000.0)
    for key in ("rope_scaling", "rope_parameters"):
        params = hf.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise _refuse(where, key, params, "a mapping with rope_type 'default'")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise _refuse(where, f"{key}.rope_type", kind, "'default': laggrow's RoPE has no scaling")
        for extra in ("factor", "partial_rotary_factor"):
            if params.get(extra) not in (None, 1, 1.0):
                raise _refuse(where, f"{key}.{extra}", params[extra], "none: laggrow's RoPE has no scaling")
        theta = params.get("rope_theta", theta)
    if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 0:
        raise LaggrowError(f"{where}: rope_theta is {shown(theta)} (expected a number > 0)")
    return float(theta)


def model_config(hf: dict, where: str) -> ModelConfig:
    """The laggrow `llama` ModelConfig of a Hugging Face config.json (a dict), or one line naming
    the first key laggrow cannot represent. `max_seq_len` is the model's max_position_embeddings."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise LaggrowError(f"{where}: model_type {shown(model_type)} is not supported (expected one of "
                           f"{', '.join(SUPPORTED)}: the Llama family)")
    defaults = _DEFAULTS[model_type]
    if hf.get("quantization_config") is not None:
        raise _refuse(where, "quantization_config", hf["quantization_config"], "unquantized weights")
    for key in _MOE_KEYS:
        if hf.get(key) not in (None, 0, 1):
            raise _refuse(where, key, hf[key], "a dense model: mixtures of experts are not laggrow's")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse(where, "hidden_act", act, "'silu': laggrow's MLP is SwiGLU")
    for key in _REQUIRED:
        if key not in hf:
            raise LaggrowError(f"{where}: missing {key} (expected a Hugging Face config.json of a {model_type} model)")
    vocab, d, f, n_layers, heads = (_int(hf, key, where) for key in _REQUIRED)
    kv = hf.get("num_key_value_heads", defaults["num_key_value_heads"])
    kv = heads if kv is None else _int(hf, "num_key_value_heads", where, kv)
    if d % heads:
        raise _refuse(where, "num_attention_heads", heads, f"a divisor of hidden_size ({d})")
    if heads % kv:
        raise _refuse(where, "num_key_value_heads", kv, f"a divisor of num_attention_heads ({heads})")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != d // heads:
        raise _refuse(where, "head_dim", head_dim, f"hidden_size / num_attention_heads = {d // heads}")
    if (d // heads) % 2:
        raise _refuse(where, "hidden_size", d, "an even head dimension hidden_size / num_attention_heads (RoPE)")
    if model_type == "llama":
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key, False) is not False:
                raise _refuse(where, key, hf[key], "false: laggrow's llama has no o_proj or MLP biases "
                              "(q/k/v biases alone are Qwen2's)")
    max_pos = _int(hf, "max_position_embeddings", where, defaults["max_position_embeddings"])
    if model_type == "qwen2" and hf.get("use_sliding_window", False) is not False:
        raise _refuse(where, "use_sliding_window", hf["use_sliding_window"], "false: laggrow attends to the whole "
                      "context")
    if model_type == "mistral":
        window = hf.get("sliding_window", defaults["sliding_window"])
        if window is not None and (not isinstance(window, int) or window < max_pos):
            raise _refuse(where, "sliding_window", window, f"null or at least max_position_embeddings ({max_pos}): "
                          "laggrow attends to the whole context")
    layer_types = hf.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list)
                                    or any(t != "full_attention" for t in layer_types)):
        odd = next((t for t in layer_types if t != "full_attention"), None) if isinstance(layer_types, list) \
            else layer_types
        raise _refuse(where, "layer_types", odd, "'full_attention' for every layer")
    tie = hf.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise LaggrowError(f"{where}: tie_word_embeddings is {shown(tie)} (expected true or false)")
    eps = hf.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise LaggrowError(f"{where}: rms_norm_eps is {shown(eps)} (expected a number > 0)")
    cfg = ModelConfig(arch="llama", pos_emb="rope", n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=kv,
                      d_ff=f, vocab_size=vocab, max_seq_len=max_pos, tie_embeddings=tie, ln_eps=float(eps),
                      rope_theta=rope_theta(hf, where), qkv_bias=model_type == "qwen2")
    cfg.validate()
    return cfg


def hf_config(cfg: ModelConfig, dtype: str, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """The config.json of `cfg` for transformers: `llama`, or `qwen2` when it has q/k/v biases
    (Llama's `attention_bias` would put one on o_proj too). RoPE's base is written both ways
    (`rope_theta` for transformers 4, `rope_parameters` for 5)."""
    qwen = cfg.qkv_bias
    out: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.ln_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0, "initializer_range": 0.02,
        "use_cache": True, "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None,
        "torch_dtype": dtype, "dtype": dtype,
    }
    if qwen:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    else:
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return out


# ---- tensors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One Hugging Face tensor: its name, its shape there, and where it lives in laggrow's tree
    (`leaf`, and `layer` for per-layer ones). `transposed`: an [out, in] matrix of HF stored
    [in, out] here with its head axis split out; otherwise a plain reshape."""

    name: str
    shape: tuple[int, ...]
    leaf: str
    layer: int | None
    transposed: bool


# (laggrow leaf, HF name, transposed); per-layer names follow `model.layers.{i}.`
_LAYER = (
    ("blocks/norm1/scale", "input_layernorm.weight", False),
    ("blocks/attn/w_q", "self_attn.q_proj.weight", True),
    ("blocks/attn/b_q", "self_attn.q_proj.bias", False),
    ("blocks/attn/w_k", "self_attn.k_proj.weight", True),
    ("blocks/attn/b_k", "self_attn.k_proj.bias", False),
    ("blocks/attn/w_v", "self_attn.v_proj.weight", True),
    ("blocks/attn/b_v", "self_attn.v_proj.bias", False),
    ("blocks/attn/w_o", "self_attn.o_proj.weight", True),
    ("blocks/norm2/scale", "post_attention_layernorm.weight", False),
    ("blocks/mlp/w_gate", "mlp.gate_proj.weight", True),
    ("blocks/mlp/w_up", "mlp.up_proj.weight", True),
    ("blocks/mlp/w_down", "mlp.down_proj.weight", True),
)
EMBED, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
# buffers some older checkpoints saved, which hold nothing a model needs (RoPE's frequencies)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def leaf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """laggrow's llama leaves and their shapes (model.param_shapes, without jax)."""
    L, D, H, K, Dh, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.d_ff,
                            cfg.vocab_size)
    shapes = {"embed/tokens": (V, D), "blocks/norm1/scale": (L, D), "blocks/attn/w_q": (L, D, H, Dh),
              "blocks/attn/w_k": (L, D, K, Dh), "blocks/attn/w_v": (L, D, K, Dh), "blocks/attn/w_o": (L, H, Dh, D),
              "blocks/norm2/scale": (L, D), "blocks/mlp/w_gate": (L, D, F), "blocks/mlp/w_up": (L, D, F),
              "blocks/mlp/w_down": (L, F, D), "norm_f/scale": (D,)}
    if cfg.qkv_bias:
        shapes.update({"blocks/attn/b_q": (L, H, Dh), "blocks/attn/b_k": (L, K, Dh), "blocks/attn/b_v": (L, K, Dh)})
    if not cfg.tie_embeddings:
        shapes["head/w"] = (D, V)
    return shapes


def tensors(cfg: ModelConfig) -> list[Tensor]:
    """Every Hugging Face tensor of `cfg`, in the order transformers writes them."""
    shapes = leaf_shapes(cfg)
    D = cfg.d_model
    out = [Tensor(EMBED, shapes["embed/tokens"], "embed/tokens", None, False)]
    for i in range(cfg.n_layers):
        for leaf, name, transposed in _LAYER:
            if leaf not in shapes:
                continue
            one = shapes[leaf][1:]
            if not transposed:
                hf = (int(np.prod(one)),)
            elif leaf == "blocks/attn/w_o":
                hf = (D, int(np.prod(one[:-1])))
            else:  # [in, out...] -> [out, in]
                hf = (int(np.prod(one[1:])), one[0])
            out.append(Tensor(f"model.layers.{i}.{name}", hf, leaf, i, transposed))
    out.append(Tensor(NORM, shapes["norm_f/scale"], "norm_f/scale", None, False))
    if not cfg.tie_embeddings:
        D, V = shapes["head/w"]
        out.append(Tensor(HEAD, (V, D), "head/w", None, True))
    return out


def to_leaf(t: np.ndarray, tensor: Tensor, leaf_shape: tuple[int, ...]) -> np.ndarray:
    """A Hugging Face tensor as (one layer's slice of) its laggrow leaf: a view, no copy."""
    one = leaf_shape[1:] if tensor.layer is not None else leaf_shape
    return t.T.reshape(one) if tensor.transposed else t.reshape(one)


def to_hf(x: np.ndarray, tensor: Tensor) -> np.ndarray:
    """(One layer's slice of) a laggrow leaf as its Hugging Face tensor, contiguous."""
    if tensor.transposed:
        return np.ascontiguousarray(x.reshape(tensor.shape[::-1]).T)
    return np.ascontiguousarray(x.reshape(tensor.shape))
