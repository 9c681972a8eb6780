"""The Llama-family architecture (`model.arch: llama`): its forward pass against a reference written
here in plain numpy, its keys and their one-line errors, its counts, and everything laggrow does
with a model done with one: train and resume, grow (width and depth, exact where claimed), a pool's
probe and train-final. Tiny: 2 layers, d_model 32, 4 query heads sharing 2 KV heads."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from conftest import CONFIGS, invoke_ok, one_line_failure, train_records
from laggrow import attention, model, resources, run_dir, store, train
from laggrow.config import ModelConfig, load_run_config, run_config_from_dict
from laggrow.errors import LaggrowError
from laggrow.growth.layout import flatten, unflatten

TINY_LLAMA = CONFIGS / "tiny-llama.yaml"
BASE = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=48, vocab_size=64, max_seq_len=12, arch="llama",
                   pos_emb="rope", n_kv_heads=2, rope_theta=500.0, ln_eps=1e-6)
# tied and untied, with and without q/k/v biases, GQA (2 groups), MQA (1 KV head) and MHA
VARIANTS = {
    "gqa.untied.bias": dict(qkv_bias=True),
    "gqa.tied": dict(tie_embeddings=True),
    "mqa.untied": dict(n_kv_heads=1),
    "mha.tied.bias": dict(n_kv_heads=0, tie_embeddings=True, qkv_bias=True),
}


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Every leaf random (norm scales around 1, biases nonzero), as after training: a fresh init's
    zero biases and unit scales would hide a bias or scale applied in the wrong place."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, spec in flatten(model.param_shapes(cfg)).items():
        x = rng.standard_normal(spec.shape).astype(np.float32)
        out[path] = 1 + 0.2 * x if path.endswith("scale") else 0.1 * x
    return unflatten(out)


# ---- the reference: Hugging Face's LlamaForCausalLM, written out in numpy (float64) ------------


def ref_rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def ref_rope(x, theta):
    """Hugging Face's apply_rotary_pos_emb: inv_freq = 1 / theta^(2i/Dh), cos/sin of
    cat(freqs, freqs), x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1)."""
    _, t, _, dh = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, dh, 2) / dh)
    freqs = np.arange(t)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
    rotated = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], axis=-1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def ref_logits(params: dict, tokens: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    p = {k: np.asarray(v, np.float64) for k, v in flatten(params).items()}
    b, t = tokens.shape
    h, kv, dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    x = p["embed/tokens"][tokens]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg.n_layers):
        def proj(y, name, i=i):
            out = np.einsum("btd,dhe->bthe", y, p[f"blocks/attn/w_{name}"][i])
            return out + p[f"blocks/attn/b_{name}"][i] if cfg.qkv_bias else out

        y = ref_rms_norm(x, p["blocks/norm1/scale"][i], cfg.ln_eps)
        q, k, v = proj(y, "q"), proj(y, "k"), proj(y, "v")
        q, k = ref_rope(q, cfg.rope_theta), ref_rope(k, cfg.rope_theta)
        k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)  # HF's repeat_kv
        scores = np.einsum("bthe,bshe->bhts", q, k) / np.sqrt(dh)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        att = np.einsum("bhts,bshe->bthe", probs, v)
        x = x + np.einsum("bthe,hed->btd", att, p["blocks/attn/w_o"][i])
        y = ref_rms_norm(x, p["blocks/norm2/scale"][i], cfg.ln_eps)
        gate, up = y @ p["blocks/mlp/w_gate"][i], y @ p["blocks/mlp/w_up"][i]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ p["blocks/mlp/w_down"][i]
    x = ref_rms_norm(x, p["norm_f/scale"], cfg.ln_eps)
    return x @ (p["embed/tokens"].T if cfg.tie_embeddings else p["head/w"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_forward_pass_is_the_numpy_reference(variant):
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    cfg.validate()
    params = random_params(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, cfg.max_seq_len)).astype(np.int32)
    got = np.asarray(jax.jit(model.apply, static_argnums=2)(params, tokens, cfg))
    want = ref_logits(params, tokens, cfg)
    assert np.abs(want).max() > 1  # logits of some size: the tolerance below means something
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the shapes, the count and the inverse agree with the layout
    shapes = flatten(model.param_shapes(cfg))
    assert sum(int(np.prod(s.shape)) for s in shapes.values()) == cfg.n_params()
    assert ("blocks/attn/b_q" in shapes) == cfg.qkv_bias and ("head/w" in shapes) != cfg.tie_embeddings
    assert ModelConfig.from_params(params, max_seq_len=cfg.max_seq_len, ln_eps=cfg.ln_eps,
                                   rope_theta=cfg.rope_theta) == cfg


def test_the_rope_base_and_the_kv_grouping_matter():
    """The reference is sensitive to what the parity test claims: another base, or key/value heads
    shared the other way round (interleaved instead of consecutive), gives other logits."""
    cfg = dataclasses.replace(BASE, **VARIANTS["gqa.untied.bias"])
    params = random_params(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, cfg.max_seq_len)).astype(np.int32)
    got = np.asarray(model.apply(params, tokens, cfg))
    other_base = ref_logits(params, tokens, dataclasses.replace(cfg, rope_theta=10000.0))
    assert np.abs(got - other_base).max() > 1e-2
    swapped = flatten(params)
    for name in ("w_k", "w_v"):
        swapped[f"blocks/attn/{name}"] = swapped[f"blocks/attn/{name}"][:, :, ::-1]
    for name in ("b_k", "b_v"):
        swapped[f"blocks/attn/{name}"] = swapped[f"blocks/attn/{name}"][:, ::-1]
    assert np.abs(np.asarray(model.apply(unflatten(swapped), tokens, cfg)) - got).max() > 1e-2


def test_grouped_query_attention_kernels_agree():
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (2, 16, 4, 8))
    k, v = (jax.random.normal(key, (2, 16, 2, 8)) for key in ks[1:])
    ours = attention.causal_attention_einsum(q, k, v)
    xla = attention.causal_attention_xla(q, k, v)  # jax's own grouped-query attention
    repeated = attention.causal_attention_einsum(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(xla), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(repeated), rtol=1e-5, atol=1e-6)


def test_scanned_and_unrolled_llama_layers_agree_and_bfloat16_stays_close():
    cfg = dataclasses.replace(BASE, **VARIANTS["gqa.untied.bias"])
    params = random_params(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, cfg.max_seq_len)).astype(np.int32)
    apply = jax.jit(model.apply, static_argnums=2)
    unrolled = np.asarray(apply(params, tokens, dataclasses.replace(cfg, scan_layers=False)))
    scanned = np.asarray(apply(params, tokens, dataclasses.replace(cfg, scan_layers=True)))
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-5)
    bf16 = np.asarray(apply(params, tokens, dataclasses.replace(cfg, dtype="bfloat16")))
    assert np.abs(bf16 - unrolled).max() < 0.05 * np.abs(unrolled).max()


def test_flops_count_every_matmul_weight():
    """6 FLOPs per matmul weight and token (the head once, tied or not) plus the attention products:
    counted here from the shapes, for both architectures."""
    for cfg in (BASE, dataclasses.replace(BASE, qkv_bias=True, tie_embeddings=True),
                ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=64, max_seq_len=12)):
        blocks = flatten(model.param_shapes(cfg)["blocks"])
        matmul = sum(int(np.prod(s.shape)) for p, s in blocks.items()
                     if len(s.shape) >= 3 and not p.split("/")[-1].startswith("b_"))  # weights, not biases
        matmul += cfg.d_model * cfg.vocab_size
        assert cfg.train_flops_per_token(12) == 6 * matmul + 6 * cfg.n_layers * 2 * 12 * cfg.d_model, cfg.arch


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_flops_convention_agrees_with_xla_cost_analysis(arch):
    """The convention (6 per matmul weight and token, plus the attention products) against the FLOPs
    XLA counts in the compiled forward and backward pass. XLA also counts the elementwise work
    (norms, softmax, activations), a few percent at this size, so the compiled count must be at or
    just above the convention (1.2% and 2.5% here): leaving out the attention products would put it
    8-10% above, counting the embedding lookup as a matmul 4% below."""
    extra = {"n_kv_heads": 2, "pos_emb": "rope"} if arch == "llama" else {}
    cfg = ModelConfig(arch=arch, n_layers=2, d_model=128, n_heads=4, d_ff=512, vocab_size=256, max_seq_len=64,
                      scan_layers=False, **extra)
    batch_size, seq_len = 4, 64
    grad = jax.jit(jax.grad(lambda p, b: train.loss_fn(p, b, cfg)))
    compiled = grad.lower(model.param_shapes(cfg), jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32)).compile()
    cost = compiled.cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ratio = xla_flops / (cfg.train_flops_per_token(seq_len) * batch_size * seq_len)
    assert 1.0 <= ratio < 1.04, ratio


def test_weight_decay_spares_norms_and_biases():
    mask = flatten(train.decay_mask(model.param_shapes(dataclasses.replace(BASE, qkv_bias=True))))
    assert sorted(p for p, decayed in mask.items() if not decayed) == [
        "blocks/attn/b_k", "blocks/attn/b_q", "blocks/attn/b_v", "blocks/norm1/scale", "blocks/norm2/scale",
        "norm_f/scale"]


# ---- the keys ------------------------------------------------------------------------------------


LLAMA = ["model.arch=llama"]


@pytest.mark.parametrize("settings, expected", [
    (["model.arch=bert"], "model.arch: expected 'gpt' or 'llama', got 'bert'"),
    (LLAMA + ["model.pos_emb=learned"],
     "model.pos_emb: expected 'rope' with model.arch 'llama' (learned positions are model.arch 'gpt'), got 'learned'"),
    (LLAMA + ["model.n_kv_heads=3"], "model.n_kv_heads: expected a divisor of model.n_heads (4), or 0 for one "
                                     "per query head, got 3"),
    (LLAMA + ["model.n_kv_heads=8"], "model.n_kv_heads: expected a divisor of model.n_heads (4), or 0 for one "
                                     "per query head, got 8"),
    (LLAMA + ["model.n_kv_heads=-1"], "model.n_kv_heads: expected an integer >= 0, got -1"),
    (LLAMA + ["model.n_kv_heads=2.0"], "model.n_kv_heads: expected an integer, got 2.0"),
    (LLAMA + ["model.qkv_bias=1"], "model.qkv_bias: expected true or false, got 1"),
    (LLAMA + ["model.rope_theta=0"], "model.rope_theta: expected a number > 0, got 0.0"),
    (LLAMA + ["model.rope_theta=.inf"], "model.rope_theta: expected a finite number, got inf"),
    (["model.n_kv_heads=2"], "model.n_kv_heads: expected 0 or 4 (model.arch 'gpt' fuses q/k/v: grouped-query "
                             "attention is model.arch 'llama'), got 2"),
    (["model.qkv_bias=true"], "model.qkv_bias: expected false (model.arch 'gpt' has no linear biases; q/k/v "
                              "biases are model.arch 'llama'), got True"),
    (["model.rope_theta=500"], "model.rope_theta: expected 10000 (unused: model.pos_emb is 'learned', so there "
                               "is no RoPE), got 500.0"),
])
def test_bad_llama_keys_are_one_line(settings, expected):
    with pytest.raises(LaggrowError) as err:
        load_run_config(None, settings)
    assert str(err.value) == expected


def test_laggrow_train_refuses_a_bad_llama_config_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from laggrow.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(TINY_LLAMA), "--out", str(out), "--set", "model.n_kv_heads=3"])
    one_line_failure(result, "model.n_kv_heads: expected a divisor of model.n_heads (4)")
    assert not out.exists()


def test_llama_keys_are_written_only_for_llama_and_read_back():
    gpt = load_run_config(CONFIGS / "tiny.yaml")
    assert not set(ModelConfig.ARCH_KEYS) & set(gpt.to_dict()["model"])  # old runs keep their config.json
    cfg = load_run_config(TINY_LLAMA, ["model.qkv_bias=true", "model.rope_theta=1e6"])
    written = json.loads(json.dumps(cfg.to_dict()))["model"]
    assert {k: written[k] for k in ModelConfig.ARCH_KEYS} == {"arch": "llama", "n_kv_heads": 2, "rope_theta": 1e6,
                                                               "qkv_bias": True}
    assert written["pos_emb"] == "rope"  # llama's default positions, written out
    assert run_config_from_dict(cfg.to_dict()) == cfg
    # n_kv_heads = n_heads is multi-head attention: one config, however it is spelled
    same = [load_run_config(TINY_LLAMA, [f"model.n_kv_heads={n}"]) for n in (0, 4)]
    assert same[0] == same[1] and "n_kv_heads" not in same[1].to_dict()["model"]
    assert same[1].model.kv_heads == 4


def test_memory_estimate_counts_the_llama_layer(monkeypatch):
    cfg = load_run_config(TINY_LLAMA)
    m = cfg.model
    # stream, 2 norms, q, attention output (6 D); k and v of 2 KV heads of 8; gate, up, silu, product
    assert resources.layer_values_per_token(m) == 6 * 32 + 2 * 2 * 8 + 4 * 96
    assert resources.training_bytes(cfg)[1] == 16 * m.n_params()
    monkeypatch.setenv(resources.MEMORY_ENV, "8G")
    with pytest.raises(LaggrowError, match=r"training needs about .* with model.n_layers=100000, "):
        load_run_config(TINY_LLAMA, ["model.n_layers=100000"])


# ---- train, resume, grow, probe ------------------------------------------------------------------

SETS = ["train.steps=12", "train.eval_every=6", "train.log_every=3", "train.warmup_steps=2"]


def sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama") / "run"
    invoke_ok("train", TINY_LLAMA, "--out", out, *sets(SETS))
    return out


def test_train_then_resume_equals_one_uninterrupted_run(llama_run, tmp_path):
    records = store.read_jsonl(llama_run / store.METRICS_FILE, "records")
    assert records[0]["train_loss"] > records[-1]["train_loss"] + 0.5
    raw = json.loads((llama_run / store.CONFIG_FILE).read_text())
    assert raw["model"]["arch"] == "llama" and raw["model"]["n_kv_heads"] == 2
    out = tmp_path / "resumed"
    invoke_ok("train", TINY_LLAMA, "--out", out, *sets(SETS), "--until", 6)
    assert not (out / store.SUMMARY_FILE).exists()
    invoke_ok("train", TINY_LLAMA, "--out", out, *sets(SETS), "--resume")
    assert train_records(out) == train_records(llama_run)
    assert json.loads((out / store.SUMMARY_FILE).read_text())["final_eval_loss"] == \
        json.loads((llama_run / store.SUMMARY_FILE).read_text())["final_eval_loss"]
    loaded = run_dir.load_run(llama_run)  # the checkpoint's config fingerprint verifies
    assert loaded.config.model.arch == "llama" and int(loaded.state["step"]) == 12


@pytest.mark.parametrize("strategy, sizes", [
    ("hypercloning+copy_zero", ["model.d_model=64", "model.n_heads=8", "model.n_kv_heads=4", "model.d_ff=192",
                                "model.n_layers=3"]),
    ("zero_top", ["model.n_layers=4"]),
])
def test_laggrow_grow_keeps_the_loss_of_a_trained_llama(llama_run, tmp_path, strategy, sizes):
    out = tmp_path / "grown"
    invoke_ok("grow", "--from", llama_run, "--strategy", strategy, "--out", out, "--optimizer-state", "carry",
              *sets(sizes))
    record = json.loads((out / store.GROWTH_FILE).read_text())
    assert record["function_preserving"] is True
    assert record["eval_loss_after"] == pytest.approx(record["eval_loss_before"], abs=1e-5)
    grown = run_dir.load_run(out)
    assert grown.config.model.arch == "llama" and grown.config.model.kv_heads * 2 == grown.config.model.n_heads


def test_a_pool_probes_and_trains_a_llama_to_the_end(llama_run, tmp_path):
    pool = {"source": str(llama_run), "target": {"n_layers": 3},
            "strategies": ["stack", "zero_top", "copy_zero", "scratch"], "seeds": [0], "lag_steps": 2,
            "final_steps": 4, "eval_points": 3, "train": {"lr": 0.003, "warmup_steps": 1}, "test_batches": 2}
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(pool))
    out = tmp_path / "pool"
    invoke_ok("probe", path, "--out", out)
    invoke_ok("train-final", out)
    curves = store.read_jsonl(out / store.CURVES_FILE, "records")
    source = run_dir.load_run(llama_run)
    data, cfg = run_dir.load_source_dataset(source), source.config
    selection = train.evaluate(source.params, cfg.model, data.selection_batches(cfg.data.eval_batches,
                                                                                 cfg.data.eval_batch_size))
    init = {r["strategy"]: r["eval_loss"] for r in curves if r["step"] == 0}
    assert init["zero_top"] == pytest.approx(selection, abs=1e-5)
    assert init["copy_zero"] == pytest.approx(selection, abs=1e-5)
    assert abs(init["stack"] - selection) > 1e-3
    final = json.loads((out / store.FINAL_FILE).read_text())
    assert final["final_steps"] == 4 and len(final["candidates"]) == 4
    assert all(np.isfinite(r["loss"]) for r in final["candidates"])


def test_a_byte_trained_llama_exports_for_transformers_with_a_tokenizer_of_its_bytes(llama_run, tmp_path):
    """laggrow export of a run trained on bytes: a `tokenizers` tokenizer.json whose ids are the
    bytes (ByteTokenizer's, on text with multi-byte characters) and a llama config.json; with the hf
    extra, transformers loads every weight and computes laggrow's logits, and its tokenizer the ids."""
    from tokenizers import Tokenizer

    from laggrow.data import ByteTokenizer
    from test_hf import HAVE_TORCH, load_in_transformers, transformers_logits

    out = tmp_path / "hf"
    invoke_ok("export", llama_run, "--out", out)
    tok = Tokenizer.from_file(str(out / store.TOKENIZER_FILE))
    text = "In the beginning – «God» créa 日本\n\nverse 2"
    assert tok.encode(text).ids == ByteTokenizer().encode(text).tolist() and tok.decode(tok.encode(text).ids) == text
    config = json.loads((out / store.CONFIG_FILE).read_text())
    assert (config["model_type"], config["num_key_value_heads"], config["vocab_size"]) == ("llama", 2, 256)
    if HAVE_TORCH:
        import transformers

        run = run_dir.load_run(llama_run)
        ids = np.random.default_rng(0).integers(0, 256, (2, 16))
        want = np.asarray(jax.jit(model.apply, static_argnums=2)(run.params, jnp.asarray(ids, jnp.int32),
                                                                 run.config.model))
        np.testing.assert_allclose(transformers_logits(load_in_transformers(out), ids), want, rtol=0, atol=1e-4)
        assert transformers.AutoTokenizer.from_pretrained(out).encode(text) == ByteTokenizer().encode(text).tolist()


def test_stacking_candidates_grow_a_llama_train_state(llama_run):
    """`laggrow stack`'s growth of a whole train state (params by plan, AdamW's moments along), on
    the trained run's state: a copied block takes its source layer's weights and moments, the zero
    block is the identity (o_proj and down_proj zero) and keeps the logits."""
    from laggrow.stack import growth_choice as sp
    from laggrow.stack import plan as sc

    loaded = run_dir.load_run(llama_run)
    state, src, tcfg = loaded.state, loaded.config.model, loaded.config.train
    dst = dataclasses.replace(src, n_layers=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)
    before = np.asarray(model.apply(state["params"], tokens, src))
    zero, block0 = sc.candidates_at(2, 1, ("zero",))[0], sc.candidates_at(2, 1, ("blocks",))[0]
    same = sp.grow_state(state, zero, src, dst, tcfg, jax.random.key(1), "carry")
    np.testing.assert_allclose(np.asarray(model.apply(same["params"], tokens, dst)), before, rtol=1e-5, atol=1e-5)
    for name in ("attn/w_o", "mlp/w_down"):
        assert not flatten(same["params"])[f"blocks/{name}"][2].any()
    copied = sp.grow_state(state, block0, src, dst, tcfg, jax.random.key(1), "carry")
    adam = [s for s in jax.tree.leaves(copied["opt_state"], is_leaf=lambda n: hasattr(n, "mu")) if hasattr(s, "mu")]
    old_adam = [s for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda n: hasattr(n, "mu")) if hasattr(s, "mu")]
    new_p, old_p = flatten(copied["params"]["blocks"]), flatten(state["params"]["blocks"])
    new_mu, old_mu = flatten(adam[0].mu["blocks"]), flatten(old_adam[0].mu["blocks"])
    assert set(new_p) == set(old_p) and "attn/w_gate" not in new_p and "mlp/w_gate" in new_p
    for path in new_p:
        for j, source in enumerate(block0.layers):  # (0, 0, 1): layer 0 duplicated after itself
            np.testing.assert_array_equal(np.asarray(new_p[path][j]), np.asarray(old_p[path][source]), err_msg=path)
            np.testing.assert_array_equal(np.asarray(new_mu[path][j]), np.asarray(old_mu[path][source]), err_msg=path)


def test_reports_name_a_llama_and_read_a_gpt_as_before():
    from laggrow.report.format import model_shape

    gpt = load_run_config(CONFIGS / "tiny.yaml").model.to_dict()
    assert model_shape(gpt) == "2 layers, d_model 32, 4 heads, d_ff 128"
    assert model_shape(load_run_config(TINY_LLAMA).model.to_dict()) == \
        "llama: 2 layers, d_model 32, 4 heads (2 key/value), d_ff 96"
