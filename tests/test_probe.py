"""LAG probing and final training of a pool in one vmapped program."""

import json

import jax
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import invoke_ok, one_line_failure, snapshot
from laggrow import model, run_dir, store, train
from laggrow.cli import app
from laggrow.pool import step as pool_train
from laggrow.pool import trainer
from laggrow.pool.spec import load_pool_config

runner = CliRunner()
POOL = {
    "target": {"n_layers": 3},
    "strategies": ["stack", "zero_top", "scratch", {"name": "stack_noise", "noise": 0.05}],
    "seeds": [0],
    "lag_steps": 4,
    "final_steps": 12,
    "eval_points": 5,
    "train": {"lr": 0.003, "warmup_steps": 2},
    "test_batches": 8,
}


@pytest.fixture(scope="module")
def base_run(tiny_base_run):
    return tiny_base_run


def _pool_file(directory, base_run, **changes):
    path = directory / "pool.yaml"
    path.write_text(yaml.safe_dump({**POOL, "source": str(base_run), **changes}))
    return path


@pytest.fixture(scope="module")
def probed(tmp_path_factory, base_run):
    """A probe followed by an interrupted then resumed train-final."""
    directory = tmp_path_factory.mktemp("pool")
    pool_path = _pool_file(directory, base_run)
    out = directory / "out"
    # other test files train pools of this config too (of other sizes): count only this one's programs
    pool_train.pool_step.cache_clear()
    invoke_ok("probe", pool_path, "--out", out)
    probe_curves = store.read_jsonl(out / store.CURVES_FILE, "records")
    result = invoke_ok("train-final", out, "--steps", 7)
    assert "paused at step 7" in result.output
    invoke_ok("train-final", out)
    return out, pool_path, probe_curves


def _final_losses(curves, step):
    return {r["candidate"]: r["eval_loss"] for r in curves if r["step"] == step}


def test_probe_writes_records_ranking_and_state(probed):
    out, pool_path, probe_curves = probed
    pool = load_pool_config(pool_path)
    assert sorted({r["step"] for r in probe_curves}) == [s for s in pool.eval_steps() if s <= 4]
    first = probe_curves[0]
    assert {"candidate", "strategy", "seed", "step", "eval_loss", "train_loss", "tokens", "flops"} <= set(first)
    at_k = [r for r in probe_curves if r["step"] == 4]
    assert all(r["tokens"] == 4 * 8 * 32 and r["flops"] > 0 for r in at_k)
    ranking = json.loads((out / store.PROBE_FILE).read_text())["candidates"]
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4]
    losses = [r["eval_loss"] for r in ranking]
    assert losses == sorted(losses)
    zero_top = next(r for r in ranking if r["strategy"] == "zero_top")
    assert zero_top["function_preserving"] and zero_top["eval_loss_init"] is not None


def test_no_pool_batch_is_one_the_source_trained_on(probed, base_run):
    """Item 0 of the little-lag issue: a pool continues the source's batch stream where it stopped
    (seed 0) or reads another seed's stream past that point, and never re-reads a source batch."""
    out, pool_path, _ = probed
    source = run_dir.load_run(base_run)
    steps = json.loads((base_run / store.SUMMARY_FILE).read_text())["steps"]
    assert source.data_position == steps > 0
    stream = json.loads((out / store.POOL_FILE).read_text())["data_stream"]
    assert stream["start"] == steps and stream["continues"] == "source"
    data = run_dir.load_source_dataset(source)
    cfg = source.config.train
    seen = {data.train_batch(p, cfg.batch_size, cfg.seed).tobytes() for p in range(steps)}
    pool = load_pool_config(pool_path, {"seeds": [0, 1, 2]})
    target = pool.target_run_config(source.config)
    candidates = trainer.check_pool(pool, source.config, target)
    pool_runner = trainer.runner_for(pool, target, data, candidates, stream["start"])
    for p in range(pool.final_steps):
        batches = pool_runner.batches(p)
        assert not any(b.tobytes() in seen for b in batches), f"pool step {p} replays a source batch"
        # seed 0 is the source's own stream, continued: batch p of the pool is batch steps + p
        np.testing.assert_array_equal(batches[0], data.train_batch(steps + p, cfg.batch_size, cfg.seed))


@pytest.mark.parametrize("key", ["data_stream", "evaluation"])
def test_a_pool_recorded_without_its_data_stream_or_evaluation_is_refused_by_train_final(probed, tmp_path, key):
    """An older laggrow's pool (formats.require_continuable_pool): train-final cannot continue it."""
    import shutil

    out, _, _ = probed
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    meta = json.loads((copy / store.POOL_FILE).read_text())
    del meta[key]
    (copy / store.POOL_FILE).write_text(json.dumps(meta))
    before = snapshot(copy)
    one_line_failure(runner.invoke(app, ["train-final", str(copy)]), f"no {key} record (probed by a laggrow that")
    assert snapshot(copy) == before


@pytest.mark.parametrize("protocol", [
    {"optimizer_state": "carry", "train": {"lr": 0.003, "warmup_steps": 0}},
    {"probe_lr": "peak", "train": {"lr": 0.003}},
], ids=["carry-warmup-0", "peak-held-over-the-probe"])
def test_every_protocol_keeps_the_probe_the_prefix_of_the_final_run(protocol, base_run, tmp_path):
    """Probe then train-final, for a protocol with no warmup: the records at k and at T equal one
    uninterrupted run from growth to T; pool.json records the protocol trained."""
    path = _pool_file(tmp_path, base_run, strategies=["stack", "zero_top", "scratch"], final_steps=8,
                      eval_every=2, **protocol)
    out = tmp_path / "out"
    invoke_ok("probe", path, "--out", out)
    invoke_ok("train-final", out)
    recorded = json.loads((out / store.POOL_FILE).read_text())["protocol"]
    assert recorded["probe_is_prefix"] is True and recorded["warmup_steps"] == 0
    assert recorded["hold_steps"] == (4 if protocol.get("probe_lr") == "peak" else 0)
    pool = load_pool_config(path)
    source = run_dir.load_run(base_run)
    target = pool.target_run_config(source.config)
    candidates = trainer.check_pool(pool, source.config, target)
    pool_runner = trainer.runner_for(pool, target, run_dir.load_source_dataset(source), candidates,
                                     source.data_position)
    state = trainer.grow_candidates(pool, source, target, candidates)
    by_step = {}
    for stop in (4, 8):
        state, _ = pool_runner.advance(state, stop - 4, stop)
        by_step[stop] = pool_runner.evaluate(state)["selection"].mean(axis=1)
    curves = store.read_jsonl(out / store.CURVES_FILE, "records")
    # log-spaced: round(geomspace(1, 8, 5)) = 1, 2, 3, 5, 8; with 0, k = 4, T = 8 and every 2 in [0, k]
    assert sorted({r["step"] for r in curves}) == [0, 1, 2, 3, 4, 5, 8]
    for stop in (4, 8):
        losses = _final_losses(curves, stop)
        np.testing.assert_allclose([losses[i] for i in range(3)], by_step[stop], rtol=0, atol=1e-5)


def test_the_lr_is_held_at_the_peak_over_the_probe_with_peak():
    pool = _pool_with(probe_lr="peak", train={"lr": 0.003})
    from laggrow.config import RunConfig

    target = pool.target_run_config(RunConfig())
    schedule = train.make_schedule(target.train)
    lrs = [float(schedule(i)) for i in range(pool.final_steps)]
    np.testing.assert_allclose(lrs[: pool.lag_steps], target.train.lr, rtol=1e-6)  # no warmup, flat over the probe
    assert lrs[pool.lag_steps + 1] < target.train.lr and lrs[-1] < lrs[pool.lag_steps + 1]  # then the decay


@pytest.mark.parametrize("schedule, end", [("cosine", 0.003 * 0.1), ("constant", 0.003)])
def test_source_end_names_the_rate_the_source_ended_at(schedule, end):
    """`train.lr: source_end` continues at the source's last rate; `train.warmup_start: source_end`
    re-warms from it, linearly to the peak at the end of the warmup."""
    from laggrow.config import RunConfig, TrainConfig

    source = RunConfig(train=TrainConfig(lr=0.003, min_lr_ratio=0.1, schedule=schedule))
    target = _pool_with(train={"lr": "source_end"}).target_run_config(source)
    assert target.train.lr == pytest.approx(end) and target.train.warmup_steps == 0
    rewarm = _pool_with(train={"lr": 0.004, "warmup_steps": 4, "warmup_start": "source_end", "schedule": "cosine"})
    target = rewarm.target_run_config(source)
    schedule_fn = train.make_schedule(target.train)
    lrs = [float(schedule_fn(i)) for i in range(6)]
    np.testing.assert_allclose(lrs[:5], np.linspace(end, 0.004, 5), rtol=1e-6)
    assert lrs[5] < 0.004
    recorded = rewarm.protocol(target)
    assert recorded["warmup_start"] == pytest.approx(end) and recorded["from_source_end"] == ["warmup_start"]
    assert rewarm.to_dict()["train"]["warmup_start"] == "source_end"  # the pool as written


def test_a_run_config_without_warmup_start_keeps_its_fingerprint():
    from laggrow.config import RunConfig, TrainConfig

    assert "warmup_start" not in RunConfig().to_dict()["train"]
    assert RunConfig(train=TrainConfig(warmup_start=1e-4)).to_dict()["train"]["warmup_start"] == 1e-4


def _pool_with(**changes):
    from laggrow.pool.spec import pool_config_from_dict

    return pool_config_from_dict({**POOL, "source": "unused", **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"probe_lr": "slow"}, "yaml.probe_lr: expected 'schedule' or 'peak'"),
    ({"train": {"lr": "source"}}, "yaml.train.lr: expected a number, or 'source_end'"),
    ({"train": {"lr": 0.001, "warmup_steps": 2, "warmup_start": 0.01}},
     "train.warmup_start: expected a learning rate in [0, train.lr=0.001]"),
    ({"probe_lr": "peak", "train": {"warmup_steps": 2}}, "yaml.train.warmup_steps: expected no value"),
    ({"eval_at": [13]}, "yaml.eval_at: expected a list of steps in [0, final_steps=12]"),
    ({"eval_every": 5}, "yaml.eval_every: expected an integer in [0, lag_steps=4]"),
    ({"halving": {"eta": 1, "first": 2}}, "yaml.halving.eta: expected an integer >= 2"),
    ({"halving": {"first": 13}}, "yaml.halving.first: expected an integer in [1, final_steps=12]"),
    ({"halving": {"first": 2, "predictor": "oracle"}}, "yaml.halving.predictor 'oracle': unknown"),
])
def test_bad_protocol_and_grid_keys_are_one_line_and_write_nothing(changes, message, base_run, tmp_path):
    path = _pool_file(tmp_path, base_run, **changes)
    result = runner.invoke(app, ["probe", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_evaluation_grid_holds_the_dense_steps_extra_steps_and_halving_budgets():
    pool = _pool_with(eval_every=2, eval_at=[9], halving={"eta": 2, "first": 3})
    # log-spaced: round(geomspace(1, 12, 5)) = 1, 2, 3, 6, 12, with 0 and k = 4; every 2 up to k; 9;
    # halving budgets 3 (4 strategies) and 6 (2 left; then one)
    assert pool.eval_steps() == [0, 1, 2, 3, 4, 6, 9, 12]


def test_zero_top_starts_at_the_source_loss(probed, base_run):
    out, _, probe_curves = probed
    source = run_dir.load_run(base_run)
    data, cfg = run_dir.load_source_dataset(source), source.config
    selection = train.evaluate(source.params, cfg.model, data.selection_batches(cfg.data.eval_batches,
                                                                                 cfg.data.eval_batch_size))
    init = {r["strategy"]: r for r in probe_curves if r["step"] == 0}
    assert init["zero_top"]["eval_loss"] == pytest.approx(selection, abs=1e-5)
    assert init["scratch"]["eval_loss"] == pytest.approx(np.log(256), abs=0.05)
    assert init["scratch"]["eval_loss"] > selection + 0.5


def test_choices_read_the_selection_set_and_results_the_test_set(probed, base_run):
    """Every record holds the selection set's loss (eval_loss, what the probe ranks by), the
    records at T the test set's too (test_loss), each the mean of its windows with their standard
    error; the two sets are disjoint halves of the held-out documents, and pool.json says which is
    which. The test set is never read before T, so nothing chosen before T can have read it."""
    out, _, probe_curves = probed
    data = run_dir.load_source_dataset(run_dir.load_run(base_run))
    evaluation = json.loads((out / store.POOL_FILE).read_text())["evaluation"]
    assert (evaluation["selection_windows"], evaluation["test_windows"]) == (16, 8 * 8)
    assert evaluation["fields"]["eval_loss"].startswith("selection")
    assert evaluation["selection_tokens"] == len(data.selection) and evaluation["test_tokens"] == len(data.test)
    assert len(data.selection) + len(data.test) + 2 == len(data.heldout)  # one separator between the halves
    records = store.read_jsonl(out / store.CURVES_FILE, "records")
    for r in records:
        windows = np.asarray(r["eval_windows"])
        assert len(windows) == 16 and r["eval_loss"] == pytest.approx(windows.mean(), abs=1e-6)
        assert r["eval_loss_se"] == pytest.approx(windows.std(ddof=1) / 4, rel=1e-4)
        assert ("test_loss" in r) == (r["step"] == 12)  # T only
    at_t = [r for r in records if r["step"] == 12]
    assert len(at_t) == 4 and all(len(r["test_windows"]) == 64 for r in at_t)
    source = run_dir.load_run(base_run)
    test_windows = data.test_batches(8, source.config.data.eval_batch_size)
    assert at_t[0]["test_loss"] != at_t[0]["eval_loss"] and test_windows.shape == (8, 8, 33)
    at_k = {r["candidate"]: r for r in probe_curves if r["step"] == 4}
    ranking = json.loads((out / store.PROBE_FILE).read_text())["candidates"]
    assert [r["candidate"] for r in ranking] == sorted(at_k, key=lambda c: at_k[c]["eval_loss"])
    final = json.loads((out / store.FINAL_FILE).read_text())["candidates"]
    assert [r["candidate"] for r in final] == sorted((r["candidate"] for r in at_t),
                                                     key=lambda c: next(r["test_loss"] for r in at_t
                                                                        if r["candidate"] == c))
    assert all(r["loss_set"] == "test" and r["loss"] == r["test_loss"] for r in final)


def test_probe_then_resumed_train_final_equals_one_uninterrupted_run(probed, base_run):
    out, pool_path, _ = probed
    pool = load_pool_config(pool_path)
    source = run_dir.load_run(base_run)
    target = pool.target_run_config(source.config)
    candidates = trainer.check_pool(pool, source.config, target)
    state = trainer.grow_candidates(pool, source, target, candidates)
    data = run_dir.load_source_dataset(source)
    pool_runner = trainer.runner_for(pool, target, data, candidates, source.data_position)
    state, _ = pool_runner.advance(state, 0, pool.final_steps)
    uninterrupted = pool_runner.evaluate(state)["selection"].mean(axis=1)
    curves = store.read_jsonl(out / store.CURVES_FILE, "records")
    resumed = _final_losses(curves, pool.final_steps)
    np.testing.assert_allclose([resumed[i] for i in range(4)], uninterrupted, rtol=0, atol=1e-5)
    steps = [(r["candidate"], r["step"]) for r in curves]
    assert len(steps) == len(set(steps)), "no record written twice after resuming"
    final = json.loads((out / store.FINAL_FILE).read_text())
    assert final["final_steps"] == 12 and len(final["candidates"]) == 4


def test_the_pool_compiles_once(probed, base_run):
    out, pool_path, _ = probed
    target = run_dir.read_run_config(out)
    # Probe, paused train-final and resumed train-final all ran in this process on one program.
    assert pool_train.pool_step(target.model, target.train)._cache_size() == 1


def _stacked_tiny(cfg, tcfg, n, lr_scales=None):
    opt = train.make_optimizer(tcfg)
    states = []
    for i in range(n):
        params = model.init_params(cfg, jax.random.key(i))
        scale = 1.0 if lr_scales is None else lr_scales[i]
        states.append(pool_train.candidate_state(params, opt.init(params), scale))
    return states


def test_vmapped_pool_equals_each_candidate_trained_alone(tiny_model_cfg):
    tcfg = train.TrainConfig(steps=6, batch_size=2, warmup_steps=1)
    singles = _stacked_tiny(tiny_model_cfg, tcfg, 3)
    batches = [jax.random.randint(jax.random.key(10 + s), (3, 2, 9), 0, 256) for s in range(4)]
    state = pool_train.stack(singles)
    step = pool_train.pool_step(tiny_model_cfg, tcfg)
    for b in batches:
        state, pool_metrics = step(state, b)
    alone = jax.jit(train.make_train_step(tiny_model_cfg, tcfg))
    for i, single in enumerate(singles):
        for b in batches:
            single, metrics = alone(single, b[i])
        np.testing.assert_allclose(float(metrics["loss"]), float(pool_metrics["loss"][i]), atol=1e-5)
        for a, p in zip(jax.tree.leaves(single["params"]), jax.tree.leaves(state["params"]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(p[i]), atol=1e-5)


def test_a_diverging_candidate_is_frozen_and_leaves_the_others_unchanged(tiny_model_cfg):
    tcfg = train.TrainConfig(steps=6, batch_size=2, warmup_steps=1, grad_clip=0.0)
    batches = [jax.random.randint(jax.random.key(20 + s), (3, 2, 9), 0, 256) for s in range(5)]
    step = pool_train.pool_step(tiny_model_cfg, tcfg)

    def run(scales):
        state = pool_train.stack(_stacked_tiny(tiny_model_cfg, tcfg, 3, scales))
        for b in batches:
            state, metrics = step(state, b)
        return state, metrics

    healthy, _ = run([1.0, 1.0, 1.0])
    broken, metrics = run([1.0, 1e30, 1.0])
    assert int(broken["diverged_at"][1]) > 0 and int(broken["step"][1]) < 5
    assert np.all(np.asarray(broken["diverged_at"])[[0, 2]] == -1)
    for a, b in zip(jax.tree.leaves(healthy["params"]), jax.tree.leaves(broken["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]])
        assert np.isfinite(np.asarray(b)[1]).all(), "the diverged candidate keeps its last finite state"


def _fails(args, expected, nothing_at=None):
    result = runner.invoke(app, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and expected in lines[0], result.output
    if nothing_at is not None:
        assert not nothing_at.exists()


@pytest.mark.parametrize("changes, expected", [
    ({"strategies": ["stack", "stak_middle"]}, "stack_middle"),
    ({"target": {"n_layers": 2}}, "larger than the source"),
    ({"target": {"n_layers": 1}}, "smaller than the source"),
    ({"lag_steps": 20}, "lag_steps"),
    ({"source": "/nonexistent/run"}, "does not exist"),
    ({"learning_rate": 1}, "unknown key"),
    ({"strategies": ["stack", {"name": "slices", "ranges": [[0, 2], [1, 1]]}]},
     "option ranges: entry 1 [1, 1] is empty"),
    ({"strategies": ["stack", {"name": "slices", "ranges": [[0, 2], [1, 2, "zero"], [0, 1]]}]},
     "option ranges: the ranges hold 4 layers, but the target's n_layers is 3"),
    ({"strategies": ["stack", {"name": "block_expansion", "every": 1}]}, "option every: 1 gives 2 + 2/1 = 4 layers"),
])
def test_bad_pools_fail_with_one_line(tmp_path, base_run, changes, expected):
    pool_path = _pool_file(tmp_path, base_run, **changes)
    _fails(["probe", pool_path, "--out", tmp_path / "out"], expected, nothing_at=tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no staging left behind"


def test_recipes_in_a_pool_yaml_grow_their_layers(tmp_path, base_run):
    """`{name: slices, ranges: [[0, 2], [1, 2, zero]]}` in a pool file is LLaMA Pro's expansion of
    a 2-layer model written as ranges: both candidates get the same params."""
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({**POOL, "source": str(base_run), "strategies": None}).replace(
        "strategies: null",
        "strategies: [{name: slices, ranges: [[0, 2], [1, 2, zero]]}, {name: block_expansion, every: 2}]"))
    pool = load_pool_config(path)
    source = run_dir.load_run(base_run)
    target = pool.target_run_config(source.config)
    candidates = trainer.check_pool(pool, source.config, target)
    assert [c["function_preserving"] for c in candidates] == [False, True]  # slices is flagged "no"
    state = trainer.grow_candidates(pool, source, target, candidates)
    w_out = np.asarray(state["params"]["blocks"]["mlp"]["w_out"])  # (candidates, layers, F, D)
    assert w_out.shape[:2] == (2, 3) and not w_out[:, 2].any()
    for a in jax.tree.leaves(state["params"]):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(a)[1])


def test_train_final_needs_a_probe_and_an_unchanged_pool(tmp_path, base_run):
    _fails(["train-final", tmp_path], "holds no probe")
    # the `probed` fixture's pool: its programs are compiled already when the module runs whole
    pool_path = _pool_file(tmp_path, base_run)
    out = tmp_path / "out"
    invoke_ok("probe", pool_path, "--out", out)
    pool_path.write_text(pool_path.read_text().replace("lag_steps: 4", "lag_steps: 5"))
    _fails(["train-final", out], "changed since the probe")
    assert not (out / store.FINAL_STATE).exists(), "nothing written"


def test_train_final_refuses_bad_steps_and_only_in_one_line(probed):
    out, _, _ = probed
    _fails(["train-final", out, "--steps", 99999], "--steps: expected a step in [lag_steps=4, final_steps=12]")
    _fails(["train-final", out, "--only", 1], "already continues 4 candidates")


def test_the_default_protocol_carries_the_moments_and_has_no_post_growth_warmup():
    """docs/study.md's recommendation is the default: a pool that says nothing gets no warmup
    after growth (not the source's 10 steps) and AdamW's moments carried."""
    from laggrow.config import RunConfig
    from laggrow.pool.spec import pool_config_from_dict

    pool = pool_config_from_dict({"source": "unused", "strategies": ["stack", "zero_top", "scratch"],
                                  "lag_steps": 4, "final_steps": 32})
    source = RunConfig()
    assert source.train.warmup_steps == 10
    target = pool.target_run_config(source)
    assert pool.optimizer_state == "carry" and target.train.warmup_steps == 0 and target.train.hold_steps == 0
    assert pool.protocol(target)["warmup_steps"] == 0
