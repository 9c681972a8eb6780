"""Training: optimizer, step, loop, checkpoints and resumption on the real KJV corpus."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import invoke_ok
from laggrow import checkpoint, model, run_dir, store, train
from laggrow.config import TrainConfig, load_run_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config_path):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    invoke_ok("train", tiny_config_path, "--out", out)
    return out


def test_schedule_warms_up_then_decays_to_min_ratio():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    sched = train.make_schedule(cfg)
    assert float(sched(0)) == pytest.approx(0.1)
    assert float(sched(9)) == pytest.approx(1.0)
    assert float(sched(100)) == pytest.approx(0.1, abs=1e-6)
    values = [float(sched(s)) for s in range(10, 101)]
    assert all(a >= b - 1e-7 for a, b in zip(values, values[1:], strict=False))


def test_weight_decay_spares_layer_norms(tiny_model_cfg):
    mask = train.decay_mask(model.param_shapes(tiny_model_cfg))
    assert mask["blocks"]["attn"]["w_qkv"] and mask["embed"]["tokens"]
    assert not mask["blocks"]["ln1"]["scale"] and not mask["ln_f"]["bias"]


def test_training_reduces_train_and_heldout_loss(tiny_run):
    records = store.read_jsonl(tiny_run / store.METRICS_FILE, "records")
    summary = json.loads((tiny_run / store.SUMMARY_FILE).read_text())
    assert records[0]["train_loss"] > records[-1]["train_loss"] + 1.0
    assert summary["final_eval_loss"] < np.log(256)  # far below a uniform guess
    assert {"final_eval_loss", "steps", "params", "tokens", "seconds"} <= set(summary)
    assert summary["steps"] == 40 and summary["tokens"] == 40 * 8 * 32
    assert [r["step"] for r in records if "eval_loss" in r] == [20, 40]


def test_checkpoint_round_trip_is_exact(tmp_path, tiny_model_cfg):
    cfg = TrainConfig(steps=10)
    step_fn = train.jit_train_step(tiny_model_cfg, cfg)
    state = train.init_state(model.init_params(tiny_model_cfg, jax.random.key(0)), train.make_optimizer(cfg))
    batch = jax.random.randint(jax.random.key(1), (2, 9), 0, 256)
    state, _ = step_fn(state, batch)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(state, data_position=7)
    fresh = train.init_state(model.init_params(tiny_model_cfg, jax.random.key(5)), train.make_optimizer(cfg))
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        restored, position = ckpt.restore(fresh)
    assert position == 7
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    adam = [s for s in jax.tree.leaves(restored["opt_state"], is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert adam, "optax state types survive the round trip"


def test_interrupted_then_resumed_run_reproduces_uninterrupted(tmp_path, tiny_run, tiny_config_path):
    out = tmp_path / "resumed"
    invoke_ok("train", tiny_config_path, "--out", out, "--until", 15)
    assert not (out / store.SUMMARY_FILE).exists()
    assert checkpoint.has_checkpoint(out)
    invoke_ok("train", tiny_config_path, "--out", out, "--resume")
    def losses(d):
        records = store.read_jsonl(d / store.METRICS_FILE, "records")
        return {r["step"]: (r["train_loss"], r.get("eval_loss")) for r in records if r["step"] % 5 == 0}
    assert losses(out) == losses(tiny_run)
    assert json.loads((out / store.SUMMARY_FILE).read_text())["final_eval_loss"] == \
        json.loads((tiny_run / store.SUMMARY_FILE).read_text())["final_eval_loss"]


def test_load_run_restores_params_and_config(tiny_run, tiny_config_path):
    loaded = run_dir.load_run(tiny_run)
    assert loaded.config.model == load_run_config(tiny_config_path).model
    assert int(loaded.state["step"]) == 40 and loaded.data_position == 40
    tokens = jnp.zeros((1, 8), jnp.int32)
    assert model.apply(loaded.params, tokens, loaded.config.model).shape == (1, 8, 256)


def test_train_step_compiles_once_per_config(tiny_model_cfg):
    import chex

    cfg = TrainConfig(steps=5, batch_size=2)
    make = train.make_train_step(tiny_model_cfg, cfg)
    counted = jax.jit(chex.assert_max_traces(make, n=1))
    state = train.init_state(model.init_params(tiny_model_cfg, jax.random.key(0)), train.make_optimizer(cfg))
    for i in range(3):
        batch = jax.random.randint(jax.random.key(i), (2, 9), 0, 256)
        state, metrics = counted(state, batch)
    assert int(state["step"]) == 3 and np.isfinite(float(metrics["loss"]))
