"""`laggrow run` and `laggrow report` against a user's files, a second process, damaged records,
Ctrl-C and SIGKILL, on configs/tiny_experiment.yaml."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import finish, invoke_in_repo, invoke_in_repo_ok, one_line_failure, snapshot, start_laggrow
from laggrow import interrupt, store
from laggrow.jobs import experiment as exp

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny_experiment.yaml"
# finals long enough to be stopped twice in: evaluated at 0 1 2 4 5 12 26 60, checkpoints every 10
LONG = ["pool.final_steps=60", "pool.checkpoint_every=10", "pool.eval_points=6"]


invoke, ok = invoke_in_repo, invoke_in_repo_ok


def with_sets(*args, sets=LONG):
    return [*args, *(item for s in sets for item in ("--set", s))]


class _StopAt(exp.Observer):
    """Raises when a stage starts: leaves an experiment directory as a run killed there would."""

    class Stop(Exception):
        pass

    def __init__(self, stage: str):
        self.stage = stage

    def stage_started(self, stage, detail, total_steps, done_steps=0, pool=None):
        if stage == self.stage:
            raise self.Stop


def _in_repo(fn):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return fn()
    finally:
        os.chdir(cwd)


# ---- a user's files -------------------------------------------------------------------------------


def test_run_never_deletes_a_users_files(tmp_path):
    out = tmp_path / "out" / "dl"
    (out / "base").mkdir(parents=True)
    (out / "pool").mkdir()
    (out / "pool" / "important.txt").write_text("x\n")
    before = snapshot(out)
    one_line_failure(invoke("run", TINY, "--out", out), "holds no experiment.json")
    assert (out / "pool" / "important.txt").read_text() == "x\n"
    assert snapshot(out) == before, "nothing written, nothing removed"


def test_a_pool_dir_laggrow_did_not_write_is_never_replaced(tmp_path):
    out = tmp_path / "ex"
    with pytest.raises(_StopAt.Stop):  # experiment.json written, the base not started
        _in_repo(lambda: exp.run_experiment(exp.load_experiment(TINY, out), _StopAt("base")))
    assert (out / store.EXPERIMENT_FILE).is_file()
    (out / "pool").mkdir()
    (out / "pool" / "important.txt").write_text("x\n")
    before = snapshot(out)
    one_line_failure(invoke("run", TINY, "--out", out), "pool/ holds no probe.json")
    assert snapshot(out) == before


def test_a_second_run_on_one_out_gets_one_line(tmp_path):
    out = tmp_path / "ex"
    with store.DirLock(out, "experiment directory"):  # another laggrow run, as far as flock goes
        one_line_failure(invoke("run", TINY, "--out", out), "in use by another laggrow process")
    assert [p.name for p in out.iterdir()] == [store.LOCK_FILE], "nothing written"


def test_an_unwritable_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_failure(invoke("run", TINY, "--out", tmp_path / "file" / "ex"), "is a file, not a directory")


# ---- a finished experiment and its report -------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "ex"
    ok(*with_sets("run", TINY, "--out", out))
    return out


def _edit_json(relative: str, change):
    def spoil(out: Path) -> None:
        path = out / relative
        obj = json.loads(path.read_text())
        change(obj)
        path.write_text(json.dumps(obj))
    return spoil


def _write(relative: str, text: str):
    return lambda out: (out / relative).write_text(text)


REPORT_DAMAGES = {
    "experiment.json garbage": (_write("experiment.json", "{{"), "malformed JSON"),
    "experiment.json {}": (_write("experiment.json", "{}"), "missing experiment_file"),
    "experiment.json wrong types": (_edit_json("experiment.json", lambda o: o.update(experiment_file=5)),
                                    "experiment.json: experiment_file: expected a string, got 5"),
    "summary.json garbage": (_write("base/summary.json", "\x00\x01"), "malformed JSON"),
    "summary.json missing a key": (_edit_json("base/summary.json", lambda o: o.pop("params")), "missing params"),
    "summary.json params text": (_edit_json("base/summary.json", lambda o: o.update(params="x")),
                                 "summary.json: params: expected an integer, got 'x'"),
    "summary.json loss text": (_edit_json("base/summary.json", lambda o: o.update(final_eval_loss="x")),
                               "summary.json: final_eval_loss: expected a number, got 'x'"),
    "pool.json garbage": (_write("pool/pool.json", "nope"), "malformed JSON"),
    "pool.json wrong types": (_edit_json("pool/pool.json", lambda o: o.update(pool=3, candidates=7)),
                              "pool.json: pool: expected a mapping, got 3"),
    "correlation.json garbage": (_write("pool/correlation.json", "[1, 2"), "malformed JSON"),
    "correlation.json a list": (_write("pool/correlation.json", "[]"), "expected the correlation"),
    "correlation.json rows text": (_edit_json("pool/correlation.json", lambda o: o.update(rows="x")),
                                   "correlation.json: rows: expected a list, got 'x'"),
    "correlation.json strategies damaged": (
        _edit_json("pool/correlation.json", lambda o: o.update(strategies=[{"strategy": 1}])),
        "correlation.json: strategies[0].strategy: expected a string, got 1"),
    "correlation.json a pick of no strategy": (
        _edit_json("pool/correlation.json", lambda o: o["rows"][0].update(leaders=["nobody"])),
        "correlation.json: strategy 'nobody': expected one of its strategies"),
    "correlation.json a loss list cut short": (
        _edit_json("pool/correlation.json", lambda o: o["strategies"][1]["loss"].pop()),
        "correlation.json: strategies[1]: expected a loss and a rank at each of the"),
}


@pytest.mark.parametrize("damage", list(REPORT_DAMAGES))
def test_report_on_a_damaged_record_is_one_line(finished, tmp_path, damage):
    out = tmp_path / "ex"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("checkpoints"))
    spoil, expected = REPORT_DAMAGES[damage]
    spoil(out)
    before = snapshot(out)
    one_line_failure(invoke("report", out), expected)
    assert snapshot(out) == before, "nothing written"


def test_a_fault_in_rendering_is_a_bug_with_its_traceback(finished, tmp_path, monkeypatch):
    # every record is checked when read: a fault while rendering is laggrow's, not a damaged file
    from laggrow.report import writer

    def broken(inputs):
        raise TypeError("a renderer's own mistake")

    out = tmp_path / "ex"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("checkpoints"))
    monkeypatch.setattr(writer, "render", broken)
    with pytest.raises(TypeError, match="a renderer's own mistake"):
        writer.write_report(out)


def test_report_refuses_an_experiment_being_written(finished, tmp_path):
    out = tmp_path / "ex"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("checkpoints"))
    with store.DirLock(out, "experiment directory"):
        one_line_failure(invoke("report", out), "in use by another laggrow process")
    ok("report", out)


# ---- SIGKILL and Ctrl-C of a real laggrow run ------------------------------------------------------


def _killed_at(out: Path, fault: str) -> None:
    """`laggrow run` SIGKILLed by itself at the fault point `fault` (laggrow.faults)."""
    proc = start_laggrow(*with_sets("run", str(TINY), "--out", str(out)), stdout=subprocess.DEVNULL,
                         fault=f"{fault}=SIGKILL")
    stderr = finish(proc)
    assert proc.returncode == -signal.SIGKILL, stderr


def _final_checkpoints(out: Path) -> list[int]:
    directory = out / "pool" / store.FINAL_STATE / store.CHECKPOINT_DIR
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []


class _CtrlCInFinals(exp.Observer):
    """Presses Ctrl-C (a real SIGINT to this process) at the first evaluation of the finals."""

    def pool_eval(self, step, records):
        if step > 4:
            os.kill(os.getpid(), signal.SIGINT)


def _records(out: Path) -> list[tuple]:
    return [(r["candidate"], r["step"], r["eval_loss"], r["train_loss"])
            for r in store.read_jsonl(out / "pool" / store.CURVES_FILE, "records")]


def test_killed_and_interrupted_runs_end_with_the_records_of_an_uninterrupted_one(finished, tmp_path):
    out = tmp_path / "ex"
    # 1. SIGKILL during the probe: its staging directory is left behind
    _killed_at(out, "staged:pool")
    assert any(out.glob(".pool.*.partial")) and not (out / "pool").exists()
    # 2. Ctrl-C during the finals: a checkpoint where it stopped, and how to go on
    with pytest.raises(interrupt.Interrupted) as stopped:
        _in_repo(lambda: exp.run_experiment(exp.load_experiment(TINY, out, LONG), _CtrlCInFinals()))
    assert "stopped in the finals stage" in str(stopped.value)
    assert f"continue with: laggrow run {TINY}" in str(stopped.value)
    assert not list(out.glob(".pool.*.partial")), "the dead probe's staging directory is gone"
    assert _final_checkpoints(out), "saved where it stopped"
    # 3. SIGKILL during the finals, past a checkpoint of their own
    first = max(_final_checkpoints(out))
    _killed_at(out, "saved")  # its first save: a checkpoint of the finals past `first`
    assert max(_final_checkpoints(out)) > first
    (out / "pool" / ".correlation.json.tmp").write_text("left by a correlate killed mid-write")
    ok(*with_sets("run", TINY, "--out", out))
    assert not list((out / "pool").glob(".*.tmp")) and not list(out.glob(".*.tmp"))
    assert _records(out) == _records(finished), "exactly the records of an uninterrupted run"
    assert json.loads((out / "pool" / store.FINAL_FILE).read_text()) == \
        json.loads((finished / "pool" / store.FINAL_FILE).read_text())
