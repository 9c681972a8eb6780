"""Optimizer-state carry end to end: through a real pool probe and through `laggrow grow`.

The same pool is probed twice from the shared tiny base run, once with `optimizer_state: carry`
and once with `reset`. What must hold:
- step 0: the function-preserving candidates start at the source's held-out loss (1e-5), in both;
- steps 1 and 2: carry and reset differ for every candidate (the moments differ), all finite;
- the carried optimizer restarted its learning-rate schedule but kept Adam's bias-correction
  count: the saved state's counts say so, and the carried zero_top candidate's params after two
  steps equal AdamW written out by hand with the *new* run's learning rates (lr/2, then lr) and
  moments built by hand from the source's (zero_top: the source's layers, then a zero layer),
  and not what the source's step would have given.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import yaml

from conftest import invoke_ok
from laggrow import growth, run_dir, store, train
from laggrow.checkpoint import Checkpointer
from laggrow.data import load_dataset
from laggrow.growth.layout import flatten, unflatten
from laggrow.pool import trainer
from laggrow.pool.spec import load_pool_config

LR, WARMUP, LAG = 0.003, 2, 2
POOL = {
    "target": {"n_layers": 3},
    "strategies": ["zero_top", "copy_zero", "stack"],
    "seeds": [0],
    "lag_steps": LAG,
    "final_steps": 4,
    "eval_points": 3,  # evaluation steps 0, 1, 2, 4
    "train": {"lr": LR, "warmup_steps": WARMUP},
}
PRESERVING = ("zero_top", "copy_zero")


@pytest.fixture(scope="module")
def probes(tmp_path_factory, tiny_base_run):
    """{"carry": dir, "reset": dir}: the same pool probed with each optimizer state."""
    directory = tmp_path_factory.mktemp("carry")
    out = {}
    for mode in ("carry", "reset"):
        pool_path = directory / f"{mode}.yaml"
        pool_path.write_text(yaml.safe_dump({**POOL, "source": str(tiny_base_run), "optimizer_state": mode}))
        out[mode] = directory / mode
        invoke_ok("probe", pool_path, "--out", out[mode])
        out[f"{mode} pool"] = pool_path
    return out


def losses(directory) -> dict[tuple[str, int], float]:
    records = store.read_jsonl(directory / store.CURVES_FILE, "pool records")
    return {(r["strategy"], r["step"]): r["eval_loss"] for r in records}


def source_loss(base) -> float:
    """The source model's held-out loss, as its run recorded it (the whole held-out set)."""
    return store.read_json(base / store.SUMMARY_FILE, "summary")["final_eval_loss"]


def selection_loss(base) -> float:
    """The source model's loss on the pool's selection set (what a pool's eval_loss reads)."""
    source = run_dir.load_run(base)
    data, cfg = run_dir.load_source_dataset(source), source.config
    return train.evaluate(source.params, cfg.model, data.selection_batches(cfg.data.eval_batches,
                                                                            cfg.data.eval_batch_size))


def test_carry_starts_at_the_source_loss_then_differs_from_reset(probes, tiny_base_run):
    carry, reset = losses(probes["carry"]), losses(probes["reset"])
    assert set(carry) == set(reset) == {(s, t) for s in POOL["strategies"] for t in (0, 1, 2)}
    for name in PRESERVING:
        assert carry[name, 0] == pytest.approx(selection_loss(tiny_base_run), abs=1e-5), name
        assert reset[name, 0] == pytest.approx(selection_loss(tiny_base_run), abs=1e-5), name
    for name in POOL["strategies"]:
        assert carry[name, 0] == reset[name, 0], "growth is the same; only the optimizer differs"
        for step in (1, LAG):
            assert np.isfinite(carry[name, step]) and np.isfinite(reset[name, step])
            # measured: 2e-4 to 2e-2. Were the moments no different, the two pools would run the
            # very same arithmetic and agree bit for bit.
            assert abs(carry[name, step] - reset[name, step]) > 1e-5, (name, step)


def pool_state_at_lag(probes, mode: str) -> dict:
    """The probe's saved state at k (every candidate), restored from its Orbax checkpoint."""
    directory, pool = probes[mode], load_pool_config(probes[f"{mode} pool"])
    target = run_dir.read_run_config(directory)
    with Checkpointer(directory / store.PROBE_STATE, read_only=True) as ckpt:
        state, _ = ckpt.restore(trainer.abstract_pool_state(target, len(pool.candidates())), step=LAG)
    return state


def adam_and_schedule(opt_state):
    """laggrow's optimizer is chain(clip, adamw): adamw's states are (adam, masked decay, schedule)."""
    adam, _, schedule = opt_state[1]
    return adam, schedule


def test_carried_counts_restart_the_schedule_and_keep_adams(probes, tiny_base_run):
    source_adam, source_schedule = adam_and_schedule(run_dir.load_run(tiny_base_run).state["opt_state"])
    assert int(source_adam.count) == int(source_schedule.count) == 10  # the base run's 10 steps
    for mode, adam_count in (("carry", 10 + LAG), ("reset", LAG)):
        adam, schedule = adam_and_schedule(pool_state_at_lag(probes, mode)["opt_state"])
        assert np.asarray(schedule.count).tolist() == [LAG] * 3, mode  # the new run's schedule
        assert np.asarray(adam.count).tolist() == [adam_count] * 3, mode  # bias correction


def hand_adamw(params: dict, mu: dict, nu: dict, count: int, grads: dict, lr: float, cfg) -> tuple:
    """One step of laggrow's optimizer written out: clip by global norm, Adam with bias
    correction at count + 1, decoupled weight decay except on LayerNorms, times -lr."""
    norm = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    clip = 1.0 if norm < cfg.grad_clip else cfg.grad_clip / norm
    out_p, out_mu, out_nu = {}, {}, {}
    for path, p in params.items():
        g = grads[path].astype(np.float64) * clip
        out_mu[path] = cfg.beta1 * mu[path] + (1 - cfg.beta1) * g
        out_nu[path] = cfg.beta2 * nu[path] + (1 - cfg.beta2) * g * g
        m_hat = out_mu[path] / (1 - cfg.beta1 ** (count + 1))
        v_hat = out_nu[path] / (1 - cfg.beta2 ** (count + 1))
        decay = 0.0 if any(part.startswith("ln") for part in path.split("/")) else cfg.weight_decay
        out_p[path] = p - lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * p)
    return out_p, out_mu, out_nu


def zero_top_moments(source_moments: dict) -> dict:
    """zero_top 2 -> 3 by hand: every layer's moments as the source's, a third layer of zeros."""
    out = {}
    for path, x in flatten(source_moments).items():
        x = np.asarray(x, np.float64)
        out[path] = np.concatenate([x, np.zeros_like(x[:1])]) if path.startswith("blocks/") else x
    return out


def test_carried_step_uses_the_new_schedule_from_its_start(probes, tiny_base_run):
    """Two steps of the carried zero_top candidate, by hand, against the pool's saved state."""
    pool = load_pool_config(probes["carry pool"])
    source = run_dir.load_run(tiny_base_run)
    target = pool.target_run_config(source.config)
    tcfg = target.train
    assert (tcfg.lr, tcfg.warmup_steps) == (LR, WARMUP)
    candidate = next(c for c in pool.candidates() if c["name"] == "zero_top")
    data = load_dataset(source.config.data, source.path)

    # The grown params are growth's (tested elsewhere); the moments are built here by hand.
    params = growth.grow(source.params, source.config.model, target.model, "zero_top",
                         jax.random.key(candidate["seed"]))
    params = {p: np.asarray(x, np.float64) for p, x in flatten(params).items()}
    adam, _ = adam_and_schedule(source.state["opt_state"])
    mu, nu, count = zero_top_moments(adam.mu), zero_top_moments(adam.nu), int(adam.count)

    # The new run's schedule: linear warmup from lr / warmup_steps to lr over warmup_steps. At
    # the source's step (10, past final_steps) it would be lr * min_lr_ratio: matching the
    # params to 2e-6 after updates of more than 1e-3 tells the two apart.
    grad_fn = jax.jit(jax.grad(train.loss_fn), static_argnums=2)
    p, m, v = params, mu, nu
    for step, lr in enumerate([LR / WARMUP, LR]):
        # the pool continues the source's batch stream where it stopped
        batch = data.train_batch(source.data_position + step, tcfg.batch_size, tcfg.seed + candidate["seed"])
        p32 = unflatten({k: x.astype(np.float32) for k, x in p.items()})
        grads = {k: np.asarray(g) for k, g in flatten(grad_fn(p32, jax.numpy.asarray(batch), target.model)).items()}
        p, m, v = hand_adamw(p, m, v, count + step, grads, lr, tcfg)
    restarted = p
    assert float(train.make_schedule(tcfg)(count)) == pytest.approx(LR * tcfg.min_lr_ratio)

    state = pool_state_at_lag(probes, "carry")
    got = {p: np.asarray(x)[candidate["candidate"]] for p, x in flatten(state["params"]).items()}
    moved = max(float(np.abs(restarted[p] - params[p]).max()) for p in got)
    assert moved > 1e-3  # the two steps really moved the params
    for path, x in got.items():
        np.testing.assert_allclose(x, restarted[path], rtol=0, atol=2e-6, err_msg=path)


# ---------------------------------------------------------------------------------------------
# laggrow grow --optimizer-state carry


@pytest.mark.parametrize("strategy,plan", [("zero_top", [0, 1, None]), ("copy_zero", [0, 0, 1])])
def test_grow_carry_keeps_the_loss_and_carries_the_moments(tmp_path, tiny_base_run, strategy, plan):
    """The grown run's checkpoint: the source's loss, the source's moments laid out by the plan
    (zero for a new layer and for a copy's zeroed output projections), the schedule at 0."""
    out = tmp_path / "grown"
    invoke_ok("grow", "--from", tiny_base_run, "--strategy", strategy, "--set", "model.n_layers=3",
              "--out", out, "--optimizer-state", "carry")
    record = store.read_json(out / store.GROWTH_FILE, "growth record")
    assert record["optimizer_state"] == "carry" and record["function_preserving"] is True
    assert record["eval_loss_after"] == pytest.approx(record["eval_loss_before"], abs=1e-5)
    assert record["eval_loss_before"] == pytest.approx(source_loss(tiny_base_run), abs=1e-6)

    source_adam, _ = adam_and_schedule(run_dir.load_run(tiny_base_run).state["opt_state"])
    carried, schedule = adam_and_schedule(run_dir.load_run(out).state["opt_state"])
    assert (int(carried.count), int(schedule.count)) == (10, 0)
    for name in ("mu", "nu"):
        src = flatten(getattr(source_adam, name))
        for path, x in flatten(getattr(carried, name)).items():
            x = np.asarray(x)
            if not path.startswith("blocks/"):
                np.testing.assert_array_equal(x, np.asarray(src[path]), err_msg=path)
                continue
            for j, source in enumerate(plan):
                zeroed = source is None or (strategy == "copy_zero" and j == 1 and path.endswith("w_out"))
                want = np.zeros_like(x[j]) if zeroed else np.asarray(src[path])[source]
                np.testing.assert_array_equal(x[j], want, err_msg=f"{name} {path} layer {j}")
