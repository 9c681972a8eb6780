"""The Transformer LM and its functional façade."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from laggrow import model
from laggrow.config import ModelConfig

VARIANTS = {
    "learned": {},
    "rope": {"pos_emb": "rope"},
    "tied": {"tie_embeddings": True},
    "rope_tied": {"pos_emb": "rope", "tie_embeddings": True},
    "llama_gqa_bias": {"arch": "llama", "pos_emb": "rope", "n_kv_heads": 2, "qkv_bias": True},
}


@pytest.fixture(params=sorted(VARIANTS))
def cfg(request, tiny_model_cfg):
    return dataclasses.replace(tiny_model_cfg, **VARIANTS[request.param])


def _tokens(key, cfg, batch=2, length=None):
    return jax.random.randint(key, (batch, length or cfg.max_seq_len), 0, cfg.vocab_size)


def test_output_shape_and_dtype(cfg):
    params = model.init_params(cfg, jax.random.key(0))
    logits = model.apply(params, _tokens(jax.random.key(1), cfg, batch=3, length=11), cfg)
    assert logits.shape == (3, 11, cfg.vocab_size)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_param_count_and_shapes_agree(cfg):
    params = model.init_params(cfg, jax.random.key(0))
    shapes = model.param_shapes(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shapes), strict=True):
        assert p.shape == s.shape and p.dtype == s.dtype
    assert sum(p.size for p in jax.tree.leaves(params)) == cfg.n_params()


def test_causality_later_tokens_do_not_change_earlier_logits(cfg):
    params = model.init_params(cfg, jax.random.key(0))
    tokens = _tokens(jax.random.key(1), cfg)
    changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % cfg.vocab_size)
    a, b = model.apply(params, tokens, cfg), model.apply(params, changed, cfg)
    np.testing.assert_array_equal(np.asarray(a[:, :9]), np.asarray(b[:, :9]))
    assert not np.allclose(np.asarray(a[:, 9:]), np.asarray(b[:, 9:]))


def test_jit_equals_no_jit(cfg):
    params = model.init_params(cfg, jax.random.key(0))
    tokens = _tokens(jax.random.key(1), cfg)
    eager = model.apply(params, tokens, cfg)
    jitted = jax.jit(model.apply, static_argnums=2)(params, tokens, cfg)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-5, rtol=1e-5)


def test_from_params_inverts_init_params(cfg):
    params = model.init_params(cfg, jax.random.key(0))
    assert ModelConfig.from_params(params, max_seq_len=cfg.max_seq_len) == cfg


def test_init_is_deterministic_and_seeded(tiny_model_cfg):
    a = model.init_params(tiny_model_cfg, jax.random.key(0))
    b = model.init_params(tiny_model_cfg, jax.random.key(0))
    c = model.init_params(tiny_model_cfg, jax.random.key(1))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a["blocks"]["attn"]["w_qkv"]), np.asarray(c["blocks"]["attn"]["w_qkv"]))


@pytest.mark.parametrize("arch, pinned", [
    ("gpt", {("embed", "tokens"): (0.020080285146832466, -0.008262822404503822),
             ("pos", "embedding"): (-0.048849113285541534, -0.0029170627240091562),
             ("blocks", "attn", "w_qkv"): (0.02591271884739399, 0.004616360180079937),
             ("blocks", "attn", "w_out"): (-0.0050781480967998505, -0.013769317418336868),
             ("blocks", "mlp", "w_in"): (-0.020417707040905952, 0.008211368694901466),
             ("blocks", "mlp", "w_out"): (0.00520416209474206, 0.00271555851213634),
             ("head", "w"): (0.023269986733794212, 0.016473447903990746)}),
    ("llama", {("embed", "tokens"): (0.020080285146832466, -0.008262822404503822),
               ("blocks", "attn", "w_q"): (-0.048849113285541534, 0.015921467915177345),
               ("blocks", "attn", "w_k"): (0.02591271884739399, -0.031013082712888718),
               ("blocks", "attn", "w_v"): (-0.012438871897757053, 0.023825351148843765),
               ("blocks", "attn", "w_o"): (-0.008335493505001068, 0.0031796784605830908),
               ("blocks", "mlp", "w_gate"): (0.01274754200130701, 0.006651732604950666),
               ("blocks", "mlp", "w_up"): (0.023269986733794212, 0.00489995488896966),
               ("blocks", "mlp", "w_down"): (-0.000511049060150981, 0.00701005756855011),
               ("head", "w"): (-0.012917149811983109, 0.0009925228077918291)}),
])
def test_a_seed_inits_the_parameters_it_always_did(arch, pinned):
    # a seed's init is part of a run's identity: these first and last values of each weight are what
    # laggrow's init gave when it was written with Flax NNX modules, so a config and seed of an
    # existing study start from the very same parameters today (norms: ones, biases: zeros)
    base = dict(vocab_size=64, d_model=32, n_heads=4, n_layers=3, d_ff=64, max_seq_len=16)
    cfg = ModelConfig(**base) if arch == "gpt" else \
        ModelConfig(**base, arch="llama", pos_emb="rope", n_kv_heads=2, qkv_bias=True)
    params = model.init_params(cfg, jax.random.key(0))
    for path, (first, last) in pinned.items():
        leaf = np.asarray(functools.reduce(dict.__getitem__, path, params)).reshape(-1)
        np.testing.assert_allclose([leaf[0], leaf[-1]], [first, last], rtol=1e-6, err_msg=str(path))
    normed = [np.asarray(x) for x in jax.tree.leaves(params) if not np.asarray(x).std()]
    assert normed and all(np.all((x == 1) | (x == 0)) for x in normed)
    assert jax.tree.structure(params) == jax.tree.structure(model.param_shapes(cfg))


def test_bfloat16_compute_stays_close_to_float32(tiny_model_cfg):
    params = model.init_params(tiny_model_cfg, jax.random.key(0))
    tokens = _tokens(jax.random.key(1), tiny_model_cfg)
    f32 = model.apply(params, tokens, tiny_model_cfg)
    bf16 = model.apply(params, tokens, dataclasses.replace(tiny_model_cfg, dtype="bfloat16"))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.05)


def test_dropout_is_keyed_and_off_without_a_key(tiny_model_cfg):
    params = model.init_params(tiny_model_cfg, jax.random.key(0))
    tokens = _tokens(jax.random.key(1), tiny_model_cfg)
    plain = model.apply(params, tokens, tiny_model_cfg)
    a = model.apply(params, tokens, tiny_model_cfg, dropout=0.3, key=jax.random.key(7))
    b = model.apply(params, tokens, tiny_model_cfg, dropout=0.3, key=jax.random.key(7))
    c = model.apply(params, tokens, tiny_model_cfg, dropout=0.3, key=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c)) and not np.allclose(np.asarray(a), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(model.apply(params, tokens, tiny_model_cfg, dropout=0.3)),
                                  np.asarray(plain))
