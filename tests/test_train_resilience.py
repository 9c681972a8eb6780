"""`laggrow train` survives what a long run on a shared machine meets: a second writer, Ctrl-C,
SIGKILL at any point, a full disk, a diverging loss, a changed corpus, a finished run resumed.

Real processes where a real process must die (`python -m laggrow train`, the same entry point as
the `laggrow` script); every resumed run is compared with one uninterrupted run of the same
config, record by record (step, train loss, held-out loss): exactly equal, nothing duplicated,
missing or torn.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typer.testing import CliRunner

from conftest import CONFIGS, finish, invoke_ok, start_laggrow, train_records, wait_stopped
from laggrow import checkpoint, run_dir, store, train
from laggrow.cli import app
from laggrow.config import TrainConfig
from laggrow.errors import LaggrowError

TINY = CONFIGS / "tiny.yaml"
SETS = ["--set", "train.steps=30", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=10"]
runner = CliRunner()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resilience") / "reference"
    invoke_ok("train", TINY, "--out", out, *SETS)
    return out


def _start(out: Path, fault: str) -> subprocess.Popen:
    return start_laggrow("train", TINY, "--out", out, *SETS, fault=fault)


def _assert_resumes_to_reference(out: Path, reference: Path) -> None:
    result = runner.invoke(app, ["train", str(TINY), "--out", str(out), *SETS, "--resume"])
    assert result.exit_code == 0, result.output
    assert train_records(out) == train_records(reference)
    summary = json.loads((out / store.SUMMARY_FILE).read_text())
    expected = json.loads((reference / store.SUMMARY_FILE).read_text())
    assert summary["complete"] is True and summary["steps"] == 30
    assert summary["final_eval_loss"] == expected["final_eval_loss"]


def _one_error_line(result, alone: bool = True) -> str:
    """The one `error:` line of a refused command; `alone`: nothing else was printed (refused
    before the header and the progress bar of a run that started)."""
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 or not alone, result.output
    return errors[0]


# ---- a second writer, then Ctrl-C --------------------------------------------------------------


def test_second_writer_is_refused_and_sigint_saves_a_resumable_checkpoint(tmp_path, reference):
    out = tmp_path / "run"
    # it stops itself right after its first record, holding the lock: its files cannot change
    proc = _start(out, fault="record:5=SIGSTOP")
    metrics = out / store.METRICS_FILE
    wait_stopped(proc)
    try:
        before = metrics.read_bytes()
        for extra in (["--resume"], []):
            result = runner.invoke(app, ["train", str(TINY), "--out", str(out), *SETS, *extra])
            line = _one_error_line(result)
            assert f"in use by another laggrow process (pid {proc.pid})" in line, line
            assert "--resume" not in line, "no hint to resume a run another process is writing"
        assert metrics.read_bytes() == before, "the refused writers wrote nothing"
    finally:
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
    stderr = finish(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr
    mentions = [line for line in stderr.splitlines() if "--resume" in line]
    assert len(mentions) == 1 and mentions[0].startswith("interrupted: saved step "), stderr
    saved = int(re.search(r"saved step (\d+)", mentions[0]).group(1))
    with checkpoint.Checkpointer(out, read_only=True) as ckpt:
        assert ckpt.latest_step() == saved and ckpt.verify(saved) is None
        first_segment = store.read_json(ckpt.step_dir(saved) / store.CHECKPOINT_MANIFEST, "manifest")["meta"]
    _assert_resumes_to_reference(out, reference)
    # the summary's time is that of both processes, not of the last one alone
    summary = json.loads((out / store.SUMMARY_FILE).read_text())
    assert summary["seconds"] > first_segment["seconds"] > 0
    assert summary["tokens_per_second"] > 0


# ---- SIGKILL -----------------------------------------------------------------------------------


def _manifest(out: Path, step: int) -> Path:
    return out / store.CHECKPOINT_DIR / str(step) / store.CHECKPOINT_MANIFEST


KILL_POINTS = {
    # record 15 written, its checkpoint not yet begun: resumed from 10, record 15 is made again
    "after a record, before its checkpoint": (
        "record:15", lambda out: train_records(out)[-1][0] == 15 and not _manifest(out, 15).parent.exists()),
    # Orbax is writing checkpoint 10 in the background; checkpoint 5 is complete
    "during a save": ("save:10", lambda out: _manifest(out, 5).is_file() and not _manifest(out, 10).exists()),
    # Orbax has finalised checkpoint 10; laggrow has not written its manifest
    "after a save, before its manifest": (
        "finalised:10", lambda out: _manifest(out, 10).parent.is_dir() and not _manifest(out, 10).exists()),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_the_uninterruptedtrain_records(point, tmp_path, reference):
    out = tmp_path / "run"
    fault, killed_there = KILL_POINTS[point]
    proc = _start(out, fault=f"{fault}=SIGKILL")
    stderr = finish(proc)
    assert proc.returncode == -signal.SIGKILL, stderr
    assert killed_there(out)
    assert not (out / store.SUMMARY_FILE).exists()
    _assert_resumes_to_reference(out, reference)


# ---- a full disk -------------------------------------------------------------------------------


# Writes past 64 KiB fail with EFBIG (SIGXFSZ ignored, so the process is not killed), as on a
# full disk: the run's small files fit, its checkpoint's data files do not. Set in a trampoline
# that then execs laggrow (both survive exec), not in a preexec_fn: forking the multithreaded
# test process is unsafe.
LIMITED = """import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
os.execv(sys.executable, [sys.executable, "-m", "laggrow", *sys.argv[1:]])
"""


def test_a_failed_checkpoint_write_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    # no compilation-cache writes either: they would fail too (and jax warns about them)
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9", "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-c", LIMITED, "train", str(TINY), "--out", str(out), *SETS],
                          capture_output=True, text=True, env=env, timeout=120)
    stderr = proc.stderr
    assert proc.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "cannot be written (file too large)" in errors[0]
    # the header, the progress bar where it stopped, the error: nothing from Orbax or asyncio
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 3, stderr
    assert not out.exists(), "a fresh run that saved nothing leaves nothing behind"


# ---- in-process: compile once, divergence, finished runs, sources, data ------------------------


def test_the_train_step_compiles_once_across_a_pause_and_resume(tmp_path):
    # the jitted step and evaluation are cached per config in this process (other tests trained
    # this config, and the stacking tests evaluate tiny.yaml's model): count only this run's
    # programs, which the persistent cache gives back without compiling them again
    train._jit_train_step.cache_clear()
    train._jit_eval.cache_clear()
    out = tmp_path / "run"
    invoke_ok("train", TINY, "--out", out, *SETS, "--until", 10)
    invoke_ok("train", TINY, "--out", out, *SETS, "--resume")
    cfg = run_dir.read_run_config(out)
    assert train.jit_train_step(cfg.model, cfg.train)._cache_size() == 1
    assert train.jit_eval(cfg.model)._cache_size() == 1


def test_restart_schedule_zeroes_the_schedule_count_and_keeps_the_moments():
    cfg = TrainConfig(steps=10, warmup_steps=2, grad_clip=1.0)
    optimizer = train.make_optimizer(cfg)
    params = {"embed": {"tokens": jnp.arange(8.0).reshape(4, 2)}, "ln_f": {"scale": jnp.ones(2)}}
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
    update = jax.jit(optimizer.update)  # one compile, not one per eager op
    for _ in range(3):
        _, opt_state = update(grads, opt_state, params)

    def of(state, kind):
        return [n for n in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(n, kind)]

    restarted = train.restart_schedule(opt_state)
    assert jax.tree.structure(restarted) == jax.tree.structure(opt_state)
    (before,), (after,) = of(opt_state, optax.ScaleByScheduleState), of(restarted, optax.ScaleByScheduleState)
    assert int(before.count) == 3 and int(after.count) == 0 and after.count.dtype == before.count.dtype
    (adam_before,), (adam_after,) = of(opt_state, optax.ScaleByAdamState), of(restarted, optax.ScaleByAdamState)
    assert int(adam_after.count) == 3  # Adam's bias correction keeps its count
    for a, b in zip(jax.tree.leaves((adam_before.mu, adam_before.nu)),
                    jax.tree.leaves((adam_after.mu, adam_after.nu)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


DIVERGE = ["--set", "train.lr=1e6", "--set", "train.grad_clip=0", "--set", "train.warmup_steps=0"]


def test_a_diverging_run_stops_at_once_naming_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(TINY), "--out", str(out), *DIVERGE,
                                 "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"])
    line = _one_error_line(result, alone=False)
    match = re.fullmatch(rf"error: (train loss|grad norm) became (nan|inf|-inf) at step (\d+); last good checkpoint: "
                         rf"step (\d+) in {re.escape(str(out))} \(lower train.lr\?\)", line)
    assert match, line
    bad, good = int(match.group(3)), int(match.group(4))
    assert good == bad - 1
    assert [r["step"] for r in store.read_jsonl(out / store.METRICS_FILE, "records")] == list(range(1, bad))
    loaded = run_dir.load_run(out, require_finished=False)  # the kept state is the good one, finite
    assert int(loaded.state["step"]) == good
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(loaded.state))


def test_a_run_diverging_before_its_first_checkpoint_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(TINY), "--out", str(out), *DIVERGE])
    assert "last good checkpoint: none (nothing is kept)" in _one_error_line(result, alone=False)
    assert not out.exists(), "the same command (with a lower lr) can be run again"


def test_resume_of_a_finished_run_trains_nothing_and_keeps_its_summary(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {name: (out / name).read_bytes() for name in (store.SUMMARY_FILE, store.METRICS_FILE)}
    result = runner.invoke(app, ["train", str(TINY), "--out", str(out), *SETS, "--resume"])
    assert result.exit_code == 0, result.output
    assert "already finished at step 30" in " ".join(result.output.split())
    assert {name: (out / name).read_bytes() for name in before} == before


def test_unfinished_or_damaged_runs_are_refused_as_sources(tmp_path, reference):
    paused = tmp_path / "paused"
    invoke_ok("train", TINY, "--out", paused, *SETS, "--until", 5)
    with pytest.raises(LaggrowError, match=r"--from .*paused: is unfinished \(no summary.json; expected a finished "
                                           r"laggrow train run; continue it with laggrow train .* --resume\)"):
        run_dir.load_run(paused, "--from")
    assert int(run_dir.load_run(paused, require_finished=False).state["step"]) == 5

    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    for text, expected in [("{", "malformed JSON"), ("{}", "missing complete, steps"),
                           ('{"complete": false, "steps": 7}', "is unfinished (summary.json says step 7")]:
        (damaged / store.SUMMARY_FILE).write_text(text)
        with pytest.raises(LaggrowError, match=re.escape(expected)):
            run_dir.load_run(damaged, "fusion partner")
    config = json.loads((reference / store.CONFIG_FILE).read_text())
    for text, expected in [("[1, 2]", "expected the run's run config (a JSON dict)"),
                           (json.dumps({**config, "model": 5}), "section 'model' is a int")]:
        (damaged / store.CONFIG_FILE).write_text(text)
        with pytest.raises(LaggrowError, match=re.escape(expected)):
            run_dir.read_run_config(damaged)


SHORT = ["--set", "train.steps=4", "--set", "train.warmup_steps=1"]


def _corpus_config(tmp_path: Path, corpus: Path) -> Path:
    text = TINY.read_text().replace("corpus: kjv", f"corpus: {corpus}")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_corpus_changed_since_the_run_started_is_refused(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "the quick brown fox jumps. " * 8 for i in range(80)))
    config = _corpus_config(tmp_path, corpus)
    out = tmp_path / "run"
    invoke_ok("train", config, "--out", out, *SHORT, "--until", 2)
    recorded = json.loads((out / store.DATA_FILE).read_text())
    assert recorded["tokenizer"] == "byte" and len(recorded["train_sha256"]) == 64

    corpus.write_text(corpus.read_text().replace("fox", "cat", 1))
    before = (out / store.METRICS_FILE).read_bytes()
    result = runner.invoke(app, ["train", str(config), "--out", str(out), *SHORT, "--resume"])
    line = _one_error_line(result)
    assert f"corpus {corpus} changed since the run started in {out}" in line and "expected the same data" in line
    assert (out / store.METRICS_FILE).read_bytes() == before
    with pytest.raises(LaggrowError, match="changed since the run started"):
        run_dir.load_source_dataset(out)

    # a run made before data.json existed is accepted, and records its data from then on
    (out / store.DATA_FILE).unlink()
    invoke_ok("train", config, "--out", out, *SHORT, "--resume")
    assert json.loads((out / store.DATA_FILE).read_text())["train_sha256"] != recorded["train_sha256"]
