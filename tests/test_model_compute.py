"""How the model is computed (model.attention, model.scan_layers, model.loss_chunk): each choice is
the same model to float tolerance, `auto` is a pure function of the machine, and every key
refuses bad values in one line."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from laggrow import attention, formats, model, run_dir, store, train
from laggrow.attention import Runtime, choose_attention
from laggrow.config import ModelConfig, TrainConfig, load_run_config, run_config_from_dict
from laggrow.errors import LaggrowError

CPU = Runtime("cpu")
TPU = Runtime("tpu")
A100 = Runtime("gpu", cuda=True, compute_capability=(8, 0), cudnn_version=90800)
H100 = Runtime("gpu", cuda=True, compute_capability=(9, 0), cudnn_version=90800)
V100 = Runtime("gpu", cuda=True, compute_capability=(7, 0), cudnn_version=90800)
ROCM = Runtime("gpu", cuda=False)
NO_CUDNN = Runtime("gpu", cuda=True, compute_capability=(9, 0), cudnn_version=None)

HAS_GPU = jax.default_backend() == "gpu"


# ---- what `auto` means, per (machine, dtype, shape) ---------------------------------------------


@pytest.mark.parametrize("rt, dtype, head_dim, expected", [
    (CPU, "bfloat16", 64, "xla"),  # no cuDNN on CPU
    (TPU, "bfloat16", 64, "xla"),
    (A100, "bfloat16", 64, "cudnn"),
    (A100, "float16", 128, "cudnn"),
    (A100, "float32", 64, "xla"),  # cuDNN flash attention takes bf16 / fp16 only
    (A100, "bfloat16", 256, "xla"),  # above 128 needs Hopper
    (H100, "bfloat16", 256, "cudnn"),
    (H100, "bfloat16", 264, "xla"),  # above 256 on any GPU
    (H100, "bfloat16", 36, "xla"),  # not a multiple of 8
    (H100, "bfloat16", 32, "cudnn"),
    (V100, "bfloat16", 64, "xla"),  # flash attention needs Ampere
    (ROCM, "bfloat16", 64, "xla"),
    (NO_CUDNN, "bfloat16", 64, "xla"),
])
def test_auto_picks_cudnn_exactly_where_it_runs(rt, dtype, head_dim, expected):
    assert choose_attention("auto", rt, dtype, head_dim, 128) == expected
    assert choose_attention("xla", rt, dtype, head_dim, 128) == "xla"
    if expected == "cudnn":
        assert choose_attention("cudnn", rt, dtype, head_dim, 128) == "cudnn"
    else:
        with pytest.raises(LaggrowError, match=r"^model\.attention: expected 'auto' or 'xla' here, got 'cudnn' \("):
            choose_attention("cudnn", rt, dtype, head_dim, 128)


def test_forced_cudnn_without_a_gpu_is_one_line_at_trace_time(tiny_model_cfg):
    if HAS_GPU:
        pytest.skip("this machine has a GPU: cuDNN may well run here")
    cfg = dataclasses.replace(tiny_model_cfg, dtype="bfloat16", attention="cudnn")
    cfg.validate()  # the config is fine in itself: a GPU could run it
    params = model.init_params(cfg, jax.random.key(0))
    with pytest.raises(LaggrowError) as err:
        jax.jit(model.apply, static_argnums=2)(params, jnp.zeros((1, 8), jnp.int32), cfg)
    assert str(err.value) == ("model.attention: expected 'auto' or 'xla' here, got 'cudnn' "
                              f"(the {jax.default_backend()} backend has no cuDNN (it needs an NVIDIA GPU))")


def test_choose_scan_unrolls_on_cpu_only():
    assert model.choose_scan("auto", "cpu") is False
    assert model.choose_scan("auto", "gpu") is True and model.choose_scan("auto", "tpu") is True
    for backend in ("cpu", "gpu"):
        assert model.choose_scan(True, backend) is True and model.choose_scan(False, backend) is False


# ---- the keys in configs ------------------------------------------------------------------------


@pytest.mark.parametrize("setting, expected", [
    ("model.attention=flash", "model.attention: expected 'auto', 'xla' or 'cudnn', got 'flash'"),
    ("model.attention=1", "model.attention: expected a string, got 1"),
    ("model.scan_layers=1", "model.scan_layers: expected 'auto', true or false, got 1"),
    ("model.scan_layers=always", "model.scan_layers: expected 'auto', true or false, got 'always'"),
    ("model.scan_layers=[true]", "model.scan_layers: expected 'auto', true or false, got [True]"),
    ("model.loss_chunk=-1", "model.loss_chunk: expected an integer >= 0, got -1"),
    ("model.loss_chunk=true", "model.loss_chunk: expected an integer, got True"),
    ("model.loss_chunk=2.5", "model.loss_chunk: expected an integer, got 2.5"),
    ("model.loss_chunk=4294967296", "model.loss_chunk: expected an integer <= 2**31 - 1, an int32, got 4294967296"),
])
def test_bad_values_are_one_line(setting, expected):
    with pytest.raises(LaggrowError) as err:
        load_run_config(None, [setting])
    assert str(err.value) == expected


@pytest.mark.parametrize("overrides", [["model.dtype=float32"], ["model.dtype=bfloat16", "model.d_model=36",
                                                                 "model.n_heads=3"]])
def test_forcing_cudnn_where_no_gpu_could_run_it_is_refused_at_validation(overrides):
    with pytest.raises(LaggrowError) as err:
        load_run_config(None, ["model.attention=cudnn", *overrides])
    assert str(err.value).startswith("model.attention: expected 'auto' or 'xla' with ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("auto", "auto"), ("True", True)])
def test_scan_layers_reads_from_set_and_yaml_alike(tmp_path, text, expected):
    value = load_run_config(None, [f"model.scan_layers={text}"]).model.scan_layers
    assert value == expected and type(value) is type(expected)
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  scan_layers: {text}\n")
    assert load_run_config(path).model.scan_layers == expected
    # and back through config.json as a run writes it
    cfg = load_run_config(path)
    assert run_config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_defaults_and_a_config_written_before_the_keys_existed(tmp_path):
    cfg = ModelConfig()
    assert (cfg.attention, cfg.scan_layers, cfg.loss_chunk) == ("auto", "auto", 0)
    raw = dataclasses.asdict(load_run_config(None, ["train.steps=40"]))
    for key in ("attention", "scan_layers", "loss_chunk"):
        del raw["model"][key]
    run = tmp_path / "old-run"
    run.mkdir()
    (run / store.CONFIG_FILE).write_text(json.dumps(raw))
    back = run_dir.read_run_config(run)
    assert back == load_run_config(None, ["train.steps=40"])
    params = model.init_params(ModelConfig(n_layers=1, d_model=8, n_heads=2, d_ff=16), jax.random.key(0))
    inferred = ModelConfig.from_params(params)
    assert (inferred.attention, inferred.scan_layers, inferred.loss_chunk) == ("auto", "auto", 0)
    assert yaml.safe_dump(back.to_dict())  # still plain data


# ---- attention kernels agree --------------------------------------------------------------------


def _qkv(dtype, b=2, t=16, h=4, dh=8):
    ks = jax.random.split(jax.random.key(0), 4)
    return tuple(jax.random.normal(k, (b, t, h, dh), jnp.float32).astype(dtype) for k in ks)


def test_the_einsum_attention_is_jax_dot_product_attention():
    q, k, v, g = _qkv(jnp.float32)

    def grads(fn):  # compiled: op by op, each primitive was compiled alone
        return jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v) * g).sum(), argnums=(0, 1, 2)))(q, k, v)

    ours, ref = jax.jit(attention.causal_attention_einsum)(q, k, v), jax.jit(attention.causal_attention_xla)(q, k, v)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(attention.causal_attention_einsum), grads(attention.causal_attention_xla), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_the_einsum_attention_in_bfloat16_stays_close():
    q, k, v, _ = _qkv(jnp.bfloat16)
    ours = attention.causal_attention_einsum(q, k, v).astype(jnp.float32)
    ref = attention.causal_attention_xla(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=0.05)


@pytest.mark.skipif(not HAS_GPU, reason="cuDNN attention needs an NVIDIA GPU; this machine has none "
                    f"(jax backend: {jax.default_backend()})")
def test_cudnn_attention_agrees_with_xla_on_a_gpu():
    if choose_attention("auto", attention.runtime(), "bfloat16", 64, 128) != "cudnn":
        pytest.skip(f"cuDNN flash attention cannot run on this GPU: {attention.runtime()}")
    q, k, v, g = _qkv(jnp.bfloat16, b=4, t=128, h=4, dh=64)

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v).astype(jnp.float32) * g).sum(),
                                argnums=(0, 1, 2)))(q, k, v)

    out = jax.jit(attention.causal_attention_cudnn)(q, k, v).astype(jnp.float32)
    ref = jax.jit(attention.causal_attention_xla)(q, k, v).astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-2, rtol=2e-2)
    for a, b in zip(grads(attention.causal_attention_cudnn), grads(attention.causal_attention_xla), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=5e-2, rtol=5e-2)


# ---- scanned and unrolled layers are one model --------------------------------------------------


# rope with dropout covers both (each compiles four programs of its own; the cross product did not
# test more): the rotary embedding and the per-layer dropout keys, scanned and unrolled alike
@pytest.mark.parametrize(("pos_emb", "dropout"), [("learned", 0.0), ("rope", 0.2)])
def test_scanned_and_unrolled_layers_agree(tiny_model_cfg, pos_emb, dropout):
    base = dataclasses.replace(tiny_model_cfg, pos_emb=pos_emb)
    params = model.init_params(base, jax.random.key(0))
    batch = jax.random.randint(jax.random.key(1), (2, base.max_seq_len + 1), 0, base.vocab_size)
    key = jax.random.key(5)
    out = {}
    for scan in (True, False):
        cfg = dataclasses.replace(base, scan_layers=scan)
        logits = jax.jit(lambda p, cfg=cfg: model.apply(p, batch[:, :-1], cfg, dropout=dropout, key=key))(params)
        loss, grads = jax.jit(jax.value_and_grad(lambda p, cfg=cfg: train.loss_fn(p, batch, cfg, dropout, key)))(params)
        out[scan] = (logits, loss, grads)
    np.testing.assert_allclose(np.asarray(out[True][0]), np.asarray(out[False][0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(out[True][1]), float(out[False][1]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[True][2]), jax.tree.leaves(out[False][2]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    if dropout:  # dropout did draw: the result is not the dropout-free model's
        plain = model.apply(params, batch[:, :-1], base)
        assert not np.allclose(np.asarray(out[True][0]), np.asarray(plain))


def test_a_scanned_train_step_compiles_once(tiny_model_cfg):
    import chex

    cfg = dataclasses.replace(tiny_model_cfg, scan_layers=True, loss_chunk=8)
    tcfg = TrainConfig(steps=5, batch_size=2, dropout=0.1)
    counted = jax.jit(chex.assert_max_traces(train.make_train_step(cfg, tcfg), n=1))
    state = train.init_state(model.init_params(cfg, jax.random.key(0)), train.make_optimizer(tcfg))
    for i in range(3):
        batch = jax.random.randint(jax.random.key(i), (2, 17), 0, 256)
        state, metrics = counted(state, batch)
    assert int(state["step"]) == 3 and np.isfinite(float(metrics["loss"]))


# ---- the chunked cross-entropy is the cross-entropy ---------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 16, 31])  # 31 of 32 tokens: the last chunk is padded
@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_and_gradient_equal_the_whole_logits_ones(tiny_model_cfg, chunk, tie):
    base = dataclasses.replace(tiny_model_cfg, tie_embeddings=tie)
    params = model.init_params(base, jax.random.key(0))
    batch = jax.random.randint(jax.random.key(1), (2, base.max_seq_len + 1), 0, base.vocab_size)
    whole = jax.value_and_grad(train.loss_fn)(params, batch, base)
    chunked = jax.value_and_grad(train.loss_fn)(params, batch, dataclasses.replace(base, loss_chunk=chunk))
    np.testing.assert_allclose(float(chunked[0]), float(whole[0]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(whole[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_chunked_loss_in_bfloat16_is_close(tiny_model_cfg):
    base = dataclasses.replace(tiny_model_cfg, dtype="bfloat16")
    params = model.init_params(base, jax.random.key(0))
    batch = jax.random.randint(jax.random.key(1), (2, base.max_seq_len + 1), 0, base.vocab_size)
    # compiled, as training runs it (op by op, each bfloat16 primitive compiled alone took longer)
    loss_and_grad = jax.jit(jax.value_and_grad(train.loss_fn), static_argnums=2)
    whole = loss_and_grad(params, batch, base)
    chunked = loss_and_grad(params, batch, dataclasses.replace(base, loss_chunk=8))
    np.testing.assert_allclose(float(chunked[0]), float(whole[0]), rtol=1e-2)
    for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(whole[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3)


def test_chunked_cross_entropy_is_optax_on_random_logits():
    h = jax.random.normal(jax.random.key(0), (13, 6))
    w = jax.random.normal(jax.random.key(1), (6, 11))
    labels = jax.random.randint(jax.random.key(2), (13,), 0, 11)
    import optax

    ref = optax.softmax_cross_entropy_with_integer_labels(h @ w, labels).mean()
    for chunk in (1, 4, 13, 20):
        np.testing.assert_allclose(float(train.chunked_cross_entropy(h, w, labels, chunk)), float(ref), rtol=1e-6)


def test_laggrow_train_with_cudnn_forced_on_a_cpu_is_one_line(tmp_path, tiny_config_path):
    if HAS_GPU:
        pytest.skip("this machine has a GPU: cuDNN may well run here")
    from typer.testing import CliRunner

    from laggrow.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tiny_config_path), "--out", str(out), "--set",
                                      "model.attention=cudnn", "--set", "model.dtype=bfloat16"])
    assert result.exit_code == 2, result.output
    # the backend is known when the step is traced: after the run's header, one error line
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert errors == [f"error: model.attention: expected 'auto' or 'xla' here, got 'cudnn' (the "
                      f"{jax.default_backend()} backend has no cuDNN (it needs an NVIDIA GPU))"]
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in result.output and not out.exists()


def test_a_run_saved_before_the_compute_keys_keeps_its_config_and_checkpoint_fingerprint(tiny_config_path):
    cfg = load_run_config(tiny_config_path)
    before = dataclasses.asdict(cfg)  # what RunConfig.to_dict wrote before the keys existed
    del before["mesh"]  # the device layout, later still, is never written
    assert set(formats.ADDED_KEYS["model"]) == {*ModelConfig.COMPUTE_KEYS, *ModelConfig.ARCH_KEYS}
    for section, keys in formats.ADDED_KEYS.items():  # the architecture's keys came later still
        for key in keys:
            del before[section][key]
    assert cfg.to_dict() == before and store.fingerprint(cfg.to_dict()) == store.fingerprint(before)
    assert run_config_from_dict(json.loads(json.dumps(before))) == cfg
    # a value that is set is written, and read back as set
    chosen = load_run_config(tiny_config_path, ["model.scan_layers=true", "model.loss_chunk=64"])
    written = json.loads(json.dumps(chosen.to_dict()))
    assert written["model"]["scan_layers"] is True and written["model"]["loss_chunk"] == 64
    assert "attention" not in written["model"] and run_config_from_dict(written) == chosen


def test_a_trained_run_at_the_defaults_loads_back(tiny_base_run):
    raw = json.loads((tiny_base_run / store.CONFIG_FILE).read_text())
    assert not set(ModelConfig.COMPUTE_KEYS + ModelConfig.ARCH_KEYS) & set(raw["model"])
    assert raw[formats.KEY] == formats.FORMAT_VERSION  # beside the run's dict, never in its fingerprint
    loaded = run_dir.load_run(tiny_base_run)  # verifies the checkpoint's config fingerprint
    assert loaded.config.model.scan_layers == "auto" and int(loaded.state["step"]) == 10
