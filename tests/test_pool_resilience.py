"""Pools that survive damage, a second writer, Ctrl-C, SIGKILL and divergence.

A few real probes on the tiny base run (3 layers, d_model 32, k=4), shared through module
fixtures: probe directories are copied before a test damages or continues them. Subprocess tests
only where a real process must be interrupted or killed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import finish, invoke_ok, one_line_failure, snapshot, start_laggrow, wait_stopped
from laggrow import model, run_dir, store, train
from laggrow.cli import app
from laggrow.pool import step as pool_step
from laggrow.pool import trainer
from laggrow.pool.spec import load_pool_config

POOL = {
    "target": {"n_layers": 3},
    "strategies": ["stack", "zero_top"],
    "seeds": [0, 1],
    "lag_steps": 4,
    "final_steps": 12,
    "eval_points": 5,
    "checkpoint_every": 3,
    "train": {"lr": 0.003, "warmup_steps": 2},
}
K = POOL["lag_steps"]


def pool_file(directory: Path, source: Path, name: str = "pool.yaml", **changes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump({**POOL, "source": str(source), **changes}))
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def curve_rows(directory: Path) -> list[tuple[int, int, float | None]]:
    return [(r["candidate"], r["step"], r["eval_loss"])
            for r in store.read_jsonl(directory / store.CURVES_FILE, "records")]


def by_key(rows) -> dict[tuple[int, int], float | None]:
    return {(c, s): loss for c, s, loss in rows}


def strict_json(path: Path):
    """Parse as JSON proper: the NaN and Infinity literals are refused."""
    def refuse(name):
        raise AssertionError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_base_run):
    """One probe of a pool of 2 strategies x 2 seeds, made while a dead probe's staging
    directory (unlocked) lies beside --out. (A live one is another probe of the same --out, and
    refused: test_a_second_probe_on_the_same_out_is_refused_before_it_trains.)"""
    directory = tmp_path_factory.mktemp("probed")
    path = pool_file(directory, tiny_base_run)
    out = directory / "out"
    stale = directory / ".out.999999.partial"
    stale.mkdir()
    (stale / "half-written").write_text("x")
    invoke_ok("probe", path, "--out", out)
    partials = {p.name for p in directory.iterdir() if p.name.endswith(".partial")}
    return out, path, partials


def copy_probe(probed, destination: Path) -> Path:
    out = destination / "pool"
    shutil.copytree(probed[0], out)
    return out


@pytest.fixture(scope="module")
def finished(probed, tmp_path_factory):
    """The probe continued to T by one uninterrupted train-final."""
    out = copy_probe(probed, tmp_path_factory.mktemp("finished"))
    invoke_ok("train-final", out)
    return out


# ---- staging, fast failures ------------------------------------------------------------------


def test_a_dead_probes_staging_is_removed(probed):
    _, _, partials = probed
    assert partials == set()


def test_probe_refuses_a_bad_out_before_loading_anything(tmp_path, tiny_base_run):
    path = pool_file(tmp_path, tiny_base_run)
    (tmp_path / "exists").mkdir()
    # one line: not even the header that is printed once the source and corpus are loaded
    one_line_failure(invoke("probe", path, "--out", tmp_path / "exists"), "already exists")
    (tmp_path / "file").write_text("x")
    one_line_failure(invoke("probe", path, "--out", tmp_path / "file"), "already exists")
    one_line_failure(invoke("probe", path, "--out", tmp_path / "file" / "below"), "is a file, not a directory")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            one_line_failure(invoke("probe", path, "--out", locked / "out"), "not writable")
        finally:
            locked.chmod(0o700)
    fused = pool_file(tmp_path, tiny_base_run, name="fused.yaml", target={"d_model": 64, "d_ff": 256},
                      strategies=[{"name": "fusion", "partner": str(tmp_path / "no-partner")}])
    one_line_failure(invoke("probe", fused, "--out", tmp_path / "new"), "fusion partner")
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    fused.write_text(fused.read_text().replace(str(tmp_path / "no-partner"), str(not_a_run)))
    one_line_failure(invoke("probe", fused, "--out", tmp_path / "new"), "not a laggrow run")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


# ---- a damaged probe directory -----------------------------------------------------------------


def _rewrite_json(path: Path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _selection(directory: Path, text: str):
    (directory / store.FINAL_STATE).mkdir()
    (directory / store.FINAL_STATE / store.SELECTION_FILE).write_text(text)


DAMAGES = {
    "pool.json garbage": (lambda d: (d / store.POOL_FILE).write_text("garbage{"), "malformed JSON"),
    "pool.json {}": (lambda d: (d / store.POOL_FILE).write_text("{}"), "missing pool, candidates, source"),
    "pool.json without candidates": (lambda d: _rewrite_json(d / store.POOL_FILE, lambda o: o.pop("candidates")),
                                     "missing candidates"),
    "pool.json candidates damaged": (lambda d: _rewrite_json(d / store.POOL_FILE,
                                                             lambda o: o["candidates"][1].pop("seed")),
                                     "missing seed"),
    "pool.json pool a list": (lambda d: _rewrite_json(d / store.POOL_FILE, lambda o: o.update(pool=[1])),
                              "'pool' must be a mapping"),
    "pool.json lag_steps text": (lambda d: _rewrite_json(d / store.POOL_FILE,
                                                         lambda o: o["pool"].update(lag_steps="four")),
                                 "lag_steps"),
    "probe.json binary": (lambda d: (d / store.PROBE_FILE).write_bytes(b"\x80\xff\x00\x81" * 16), "not UTF-8"),
    "probe.json candidates out of range": (
        lambda d: _rewrite_json(d / store.PROBE_FILE, lambda o: o["candidates"][0].update(candidate=9)),
        "'candidates' must list ranked candidates"),
    "probe_state deleted": (lambda d: shutil.rmtree(d / store.PROBE_STATE), "probe_state: missing"),
    "selection.json garbage": (lambda d: _selection(d, "[1,"), "malformed JSON"),
    "selection.json out of range": (lambda d: _selection(d, '{"candidates": [7]}'), "distinct candidate indices"),
    "curves.jsonl garbage line": (lambda d: (d / store.CURVES_FILE).open("a").write("garbage\n"), "malformed"),
    "curves.jsonl record without step": (lambda d: (d / store.CURVES_FILE).open("a").write('{"candidate": 0}\n'),
                                         "expected integer 'candidate' and 'step'"),
    "config.json deleted": (lambda d: (d / store.CONFIG_FILE).unlink(), "not a laggrow run"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_train_final_on_a_damaged_probe_is_one_line_and_writes_nothing(probed, tmp_path, damage):
    directory = copy_probe(probed, tmp_path)
    spoil, expected = DAMAGES[damage]
    spoil(directory)
    before = snapshot(directory)
    one_line_failure(invoke("train-final", directory), expected)
    assert snapshot(directory) == before, "nothing written"


def test_a_corrupted_probe_state_is_one_line(probed, tmp_path):
    directory = copy_probe(probed, tmp_path)
    data_files = [p for p in (directory / store.PROBE_STATE).rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert data_files
    for path in data_files:  # flip bytes in the middle of every data file
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
        path.write_bytes(bytes(raw))
    result = invoke("train-final", directory)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (directory / store.FINAL_STATE / store.CHECKPOINT_DIR).exists()


def test_a_changed_pool_file_names_exactly_the_changed_keys(probed, tmp_path):
    directory = copy_probe(probed, tmp_path)
    path = tmp_path / "pool.yaml"
    shutil.copy(probed[1], path)
    _rewrite_json(directory / store.POOL_FILE, lambda o: o.update(pool_file=str(path)))
    # chunk_size says how the pool is trained, not what it is: changing it changes no pool
    path.write_text(path.read_text().replace("eval_points: 5", "eval_points: 6") + "chunk_size: 1\n")
    line = one_line_failure(invoke("train-final", directory), "changed since the probe")
    # seeds and strategies are tuples in the pool and lists in pool.json: they did not change
    assert "(eval_points)" in line, line


# ---- locks -----------------------------------------------------------------------------------------


def test_a_second_writer_of_a_pool_gets_one_line(probed, tmp_path):
    directory = copy_probe(probed, tmp_path)
    before = snapshot(directory)
    with store.DirLock(directory, "pool directory"):  # another laggrow process, as far as flock goes
        one_line_failure(invoke("train-final", directory), "in use by another laggrow process")
        one_line_failure(invoke("correlate", directory), "in use by another laggrow process")
    assert snapshot(directory) == before


def test_a_second_probe_on_the_same_out_is_refused_before_it_trains(tiny_base_run, tmp_path):
    """A probe (plain or --halving) while another builds the same --out: one line naming the
    first one's pid, before it loads or trains anything; the first one's directory untouched."""
    path = pool_file(tmp_path, tiny_base_run, halving={"eta": 2, "first": 2})
    out = tmp_path / "probe"
    # the first probe stops itself once its staging directory is made and locked
    proc = start_laggrow("probe", path, "--out", out, fault="staged:probe=SIGSTOP")
    try:
        wait_stopped(proc)
        before = snapshot(tmp_path)
        for extra in ([], ["--halving"]):
            one_line_failure(invoke("probe", path, "--out", out, *extra),
                             f"--out {out}: in use by another laggrow process (pid {proc.pid})")
        assert snapshot(tmp_path) == before
    finally:
        proc.kill()
        proc.wait()


# ---- the probe is the prefix of the final run -----------------------------------------------------


def test_probe_and_train_final_are_one_run_with_several_seeds(probed, finished, tiny_base_run):
    """The records of probe + train-final equal one uninterrupted run of the pool from growth
    to T, evaluated at k and at T, for a pool of two seeds."""
    pool = load_pool_config(probed[1])
    source = run_dir.load_run(tiny_base_run)
    target = pool.target_run_config(source.config)
    candidates = trainer.check_pool(pool, source.config, target)
    runner = trainer.runner_for(pool, target, run_dir.load_source_dataset(source), candidates, source.data_position)
    state = trainer.grow_candidates(pool, source, target, candidates)
    state, _ = runner.advance(state, 0, K)
    at_k = runner.evaluate(state)["selection"].mean(axis=1)
    state, _ = runner.advance(trainer.grow_candidates(pool, source, target, candidates), 0, pool.final_steps)
    at_final = runner.evaluate(state)["selection"].mean(axis=1)
    losses = by_key(curve_rows(finished))
    assert {c["seed"] for c in candidates} == {0, 1}
    np.testing.assert_allclose([losses[(i, K)] for i in range(4)], at_k, rtol=0, atol=1e-5)
    np.testing.assert_allclose([losses[(i, 12)] for i in range(4)], at_final, rtol=0, atol=1e-5)


def test_train_final_only_continues_exactly_the_best_at_k(probed, finished, tmp_path):
    directory = copy_probe(probed, tmp_path)
    invoke_ok("train-final", directory, "--only", 2)
    ranked = [r["candidate"] for r in json.loads((directory / store.PROBE_FILE).read_text())["candidates"]]
    full, only = by_key(curve_rows(finished)), by_key(curve_rows(directory))
    beyond = {key for key in only if key[1] > K}
    assert {c for c, _ in beyond} == set(ranked[:2])
    assert beyond == {key for key in full if key[1] > K and key[0] in ranked[:2]}
    np.testing.assert_allclose([only[key] for key in sorted(beyond)], [full[key] for key in sorted(beyond)],
                               rtol=0, atol=1e-5)


def test_chunks_of_two_give_the_curves_of_the_whole_pool(finished, tiny_base_run, tmp_path):
    path = pool_file(tmp_path, tiny_base_run, chunk_size=2)
    invoke_ok("probe", path, "--out", tmp_path / "chunked")
    invoke_ok("train-final", tmp_path / "chunked")
    whole, chunked = by_key(curve_rows(finished)), by_key(curve_rows(tmp_path / "chunked"))
    assert whole.keys() == chunked.keys()
    np.testing.assert_allclose([chunked[k] for k in sorted(whole)], [whole[k] for k in sorted(whole)],
                               rtol=0, atol=1e-5)


# ---- divergence ---------------------------------------------------------------------------------------


def _stacked(cfg, tcfg, scales):
    opt = train.make_optimizer(tcfg)
    states = []
    for i, scale in enumerate(scales):
        params = model.init_params(cfg, jax.random.key(i))
        states.append(pool_step.candidate_state(params, opt.init(params), scale))
    return pool_step.stack(states)


def test_an_update_to_non_finite_params_is_rejected_though_loss_and_gradient_are_finite(tiny_model_cfg):
    # the configuration of test_probe's divergence test: one compiled program for both
    tcfg = train.TrainConfig(steps=6, batch_size=2, warmup_steps=1, grad_clip=0.0)
    batches = [jax.random.randint(jax.random.key(20 + s), (3, 2, 9), 0, 256) for s in range(3)]
    step = pool_step.pool_step(tiny_model_cfg, tcfg)
    initial = jax.device_get(_stacked(tiny_model_cfg, tcfg, [1.0, 1.0, 1.0])["params"])

    def run(scales):
        state, losses = _stacked(tiny_model_cfg, tcfg, scales), []
        for b in batches:
            state, metrics = step(state, b)
            losses.append(np.asarray(metrics["loss"]))
        return state, losses

    healthy, _ = run([1.0, 1.0, 1.0])
    broken, losses = run([1.0, math.inf, 1.0])
    # the loss of the first step is computed on the initial parameters: finite; its update is not
    assert np.isfinite(losses[0][1])
    assert int(broken["diverged_at"][1]) == 1 and int(broken["step"][1]) == 0
    assert list(np.asarray(broken["diverged_at"])[[0, 2]]) == [-1, -1]
    for a, b, init in zip(jax.tree.leaves(healthy["params"]), jax.tree.leaves(broken["params"]),
                          jax.tree.leaves(initial), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]])
        np.testing.assert_array_equal(np.asarray(b)[1], np.asarray(init)[1])  # frozen where it started


def test_a_diverging_candidate_of_a_real_pool_is_left_out_by_correlate(tmp_path, tiny_base_run):
    path = pool_file(tmp_path, tiny_base_run, seeds=[0], checkpoint_every=0,
                     strategies=["stack", "zero_top", "scratch", {"name": "stack", "label": "hot", "lr_scale": 1e30}])
    out = tmp_path / "out"
    invoke_ok("probe", path, "--out", out)
    invoke_ok("train-final", out)
    (out / ".correlation.json.tmp").write_text("left by a correlate killed mid-write")
    invoke_ok("correlate", out, "--bootstrap", 20)
    assert not list(out.glob(".*.tmp")), "the dead writer's temporary is removed"
    for name in (store.PROBE_FILE, store.FINAL_FILE, store.CORRELATION_FILE, store.POOL_FILE):
        strict_json(out / name)
    for line in (out / store.CURVES_FILE).read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in curves.jsonl"))
    hot = [r for r in store.read_jsonl(out / store.CURVES_FILE, "records") if r["strategy"] == "hot"]
    assert hot[0]["step"] == 0 and hot[0]["eval_loss"] is not None and not hot[0]["diverged"]
    assert hot[-1]["diverged"] and hot[-1]["eval_loss"] is None and hot[-1]["step"] == 12
    final = strict_json(out / store.FINAL_FILE)["candidates"]
    assert final[-1]["strategy"] == "hot" and final[-1]["diverged"] and final[-1]["eval_loss"] is None
    result = strict_json(out / store.CORRELATION_FILE)
    assert [e["strategy"] for e in result["excluded"]] == ["hot"]
    assert "diverged at step" in result["excluded"][0]["reason"]
    assert sorted(s["strategy"] for s in result["strategies"]) == ["scratch", "stack", "zero_top"]


# ---- Ctrl-C and SIGKILL of a real train-final ------------------------------------------------------

LONG = {"final_steps": 60, "eval_points": 6, "checkpoint_every": 10}  # evaluated at 0 1 2 4 5 12 26 60


@pytest.fixture(scope="module")
def long_probe(tmp_path_factory, tiny_base_run):
    """A probe whose train-final runs long enough (T=60, checkpoints every 10) to be interrupted
    twice at its fault points, and the curves of its uninterrupted train-final."""
    directory = tmp_path_factory.mktemp("long")
    path = pool_file(directory, tiny_base_run, **LONG)
    invoke_ok("probe", path, "--out", directory / "probe")
    reference = directory / "reference"
    shutil.copytree(directory / "probe", reference)
    invoke_ok("train-final", reference)
    return directory / "probe", curve_rows(reference)


def test_ctrl_c_then_sigkill_of_train_final_resume_to_the_same_records(long_probe, tmp_path):
    """One train-final stopped twice, as a long one on a shared machine may be: Ctrl-C (a
    checkpoint where it stopped, one line saying how to go on), then SIGKILL past a checkpoint
    of its own; run again, it ends with the records of an uninterrupted run, each once."""
    directory = tmp_path / "pool"
    shutil.copytree(long_probe[0], directory)
    proc = start_laggrow("train-final", directory, fault="record:5=SIGINT")  # Ctrl-C at the first record past k
    stderr = finish(proc)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("interrupted: saved step ") and f"laggrow train-final {directory}" in lines[0]
    saved = int(lines[0].split("saved step ")[1].split()[0])
    assert K < saved < LONG["final_steps"]

    # SIGKILL right after the record at step 26, past the checkpoint at 20
    proc = start_laggrow("train-final", directory, fault="record:26=SIGKILL")
    stderr = finish(proc)
    assert proc.returncode == -signal.SIGKILL, stderr
    assert max(r["step"] for r in store.read_jsonl(directory / store.CURVES_FILE, "records")) == 26
    assert saved < 20 and (directory / store.FINAL_STATE / store.CHECKPOINT_DIR / "20").is_dir()
    with store.DirLock(directory):  # the kernel released the dead process's lock
        pass
    invoke_ok("train-final", directory)
    assert curve_rows(directory) == long_probe[1], "the records of an uninterrupted run, each once"
