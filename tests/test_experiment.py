"""`laggrow run` end to end on the tiny experiment: records, report, idempotence, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import invoke_in_repo, invoke_in_repo_ok
from laggrow import store

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny_experiment.yaml"
STAGES = ("base", "probe", "finals", "correlate", "report")
FIGURES = ("correlation.png", "curves.png", "ranks.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



invoke, ok = invoke_in_repo, invoke_in_repo_ok


def fails(args, expected: str, nothing_at: Path | None = None):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output
    if nothing_at is not None:
        assert not nothing_at.exists(), "nothing written"
    return result


def snapshot(directory: Path) -> dict[str, int]:
    # the lock file aside: every run takes the lock and writes its pid there, which is no record
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")
            if p.is_file() and p.name != store.LOCK_FILE}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment") / "tiny"
    first = ok("run", TINY, "--out", out)
    return out, first


def test_run_writes_every_record_and_the_report(experiment):
    out, first = experiment
    for stage in STAGES:
        assert f"{stage}" in first.output
    assert first.output.count("done in") == len(STAGES), first.output
    assert f"report: {out / 'report.md'}" in " ".join(first.output.split())

    summary = json.loads((out / "base" / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == 10  # base_set applied
    probe = json.loads((out / "pool" / "probe.json").read_text())
    final = json.loads((out / "pool" / "final.json").read_text())
    assert probe["lag_steps"] == 4 and final["final_steps"] == 12
    assert {r["strategy"] for r in final["candidates"]} == {"stack", "zero_top", "copy_zero", "scratch"}
    pool = yaml.safe_load((out / "pool.yaml").read_text())
    assert pool["source"] == str(out / "base")
    # one pool (`pool:`) keeps its layout and record: pool/ beside pool.yaml, nothing of `pools:`
    record = json.loads((out / "experiment.json").read_text())
    assert sorted(record) == ["base_dir", "config", "correlate", "experiment_file", "experiment_given",
                              "out_given", "pool_dir"] and record["pool_dir"] == "pool"
    assert sorted(record["config"]) == ["base", "base_set", "correlate", "out", "pool"]
    assert not (out / "pools").exists()
    correlation = json.loads((out / "pool" / "correlation.json").read_text())
    assert correlation["final_step"] == 12 and correlation["bootstrap"]["n"] == 50
    for name in FIGURES:
        assert (out / "pool" / name).read_bytes()[:8] == PNG_MAGIC, name
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == set(STAGES)

    report = (out / "report.md").read_text()
    for heading in ("## The small model", "## The pool", "## Step 0 against step k", "## The little lag",
                    "## The pick", "## Predictors", "## Loss curves"):
        assert heading in report, heading
    for name in (*FIGURES, "curves-growth.png"):
        assert f"(pool/{name})" in report, name
    assert (out / "pool" / "curves-growth.png").read_bytes()[:8] == PNG_MAGIC  # the pool without scratch
    assert "42,304" in report and "loss at init" in report and "loss at k=4" in report
    assert "| `zero_top` | yes |" in report and "| `scratch` | no |" in report
    assert "step 0 (initialisation)" in report and "step k = 4 (the probe)" in report
    assert "little lag:" in report and "LAG at k = 4 picks" in report
    # every predictor's little lag and regret, and halving replayed (4 strategies: steps 1, 2)
    assert "Predictors of the loss at step 12" in first.output and "successive halving" in first.output
    assert [p["predictor"] for p in correlation["predictors"]["predictors"]] == ["loss", "window", "slope",
                                                                                 "extrapolate"]
    assert [r["steps"] for r in correlation["halving"]["rounds"]] == [1, 2]
    assert "| `extrapolate` |" in report and "Successive halving (eta 2, first 1" in report


def test_second_run_redoes_nothing(experiment):
    out, _ = experiment
    before = snapshot(out)
    assert any(name.startswith("base/checkpoints/") for name in before)
    assert any(name.startswith("pool/final_state/") for name in before)
    again = ok("run", TINY, "--out", out)
    for stage in STAGES:
        assert f"{stage:<9} reused" in again.output, again.output
    assert "done in" not in again.output
    assert snapshot(out) == before, "no file written, rewritten or removed"


def test_the_correlation_is_current_by_what_it_was_made_from_not_by_mtimes(experiment, tmp_path):
    import shutil

    from laggrow.jobs import experiment as exp

    out = tmp_path / "copy"
    shutil.copytree(experiment[0], out, ignore=shutil.ignore_patterns("checkpoints", "*_state"))
    pool = out / "pool"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        ex = exp.load_experiment(TINY, out)
    finally:
        os.chdir(cwd)
    assert exp.correlation_is_current(ex, ex.pools[0])
    # a copy (cp without -p, a sync) that leaves correlation.json older than final.json: still current
    os.utime(pool / "correlation.json", (1, 1))
    assert exp.correlation_is_current(ex, ex.pools[0])
    # curves changed under a correlation.json that is newer: made again
    lines = (pool / "curves.jsonl").read_text().splitlines()
    (pool / "curves.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    os.utime(pool / "correlation.json")
    assert not exp.correlation_is_current(ex, ex.pools[0])


def test_report_renders_again_from_the_records(experiment):
    out, _ = experiment
    text = (out / "report.md").read_text()
    (out / "report.md").unlink()
    result = ok("report", out)
    assert str(out / "report.md") in result.output
    assert (out / "report.md").read_text() == text


def test_changed_experiment_is_refused_and_changes_nothing(experiment):
    out, _ = experiment
    before = snapshot(out)
    changed = fails(["run", TINY, "--out", out, "--set", "pool.lag_steps=5"], "pool changed since the probe")
    assert "(lag_steps)" in changed.output
    fails(["run", TINY, "--out", out, "--set", "base_set=[train.steps=11]"], "holds a different run")
    assert snapshot(out) == before


def _experiment_file(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["base"] = str(TINY.parent / raw["base"])  # the file is written elsewhere: its base from here
    raw.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes, expected", [
    ({"lag": 4}, "experiment.yaml.lag: unknown key"),
    ({"base": "configs/nowhere.yaml"}, "configs/nowhere.yaml: file not found"),
    ({"pool": {"source": "runs/x", "target": {"n_layers": 3}, "strategies": ["stack"], "lag_steps": 1,
               "final_steps": 2}}, "without 'source'"),
    ({"pool": {"target": {"n_layers": 3}, "strategies": ["stack", "stak_top"], "lag_steps": 1,
               "final_steps": 2, "eval_points": 2}}, "stack_top"),
    ({"correlate": {"threshold": 2}}, "threshold in (-1, 1]"),
    ({"correlate": {"boot": 10}}, "correlate.boot: unknown key"),
    ({"correlate": {"predictor": "oracle"}}, "correlate.predictor 'oracle': unknown (expected one of: loss"),
    ({"correlate": {"halving": {"first": 5}}}, "its rounds end at steps [5, 10], of which [5, 10] are not evaluated"),
    ({"correlate": {"halving": {"first": 1, "eta": 1}}}, "correlate.halving.eta: expected an integer >= 2"),
])
def test_bad_experiments_fail_with_one_line_and_write_nothing(tmp_path, changes, expected):
    path = _experiment_file(tmp_path, **changes)
    fails(["run", path, "--out", tmp_path / "out"], expected, nothing_at=tmp_path / "out")


def test_report_needs_an_experiment_directory(tmp_path):
    fails(["report", tmp_path], "holds no experiment")


def test_an_interrupted_base_is_resumed_not_restarted(tmp_path):
    from laggrow.jobs import experiment as exp

    out = tmp_path / "tiny"
    base_set = "base_set=[train.steps=10,train.eval_every=10,train.checkpoint_every=5]"

    class Stop(Exception):
        pass

    class StopAfterStep5(exp.Observer):  # the run dies between its checkpoint at 5 and the end
        def base_record(self, record: dict) -> None:
            if record["step"] > 5:
                raise Stop

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with pytest.raises(Stop):
            exp.run_experiment(exp.load_experiment(TINY, out, [base_set]), StopAfterStep5())
    finally:
        os.chdir(cwd)
    assert not (out / "base" / "summary.json").exists()
    paused = "".join(line + "\n" for line in (out / "base" / "metrics.jsonl").read_text().splitlines()
                     if json.loads(line)["step"] <= 5)
    assert paused
    result = ok("run", TINY, "--out", out, "--set", base_set)
    assert "base      done in" in result.output
    resumed = (out / "base" / "metrics.jsonl").read_text()
    # the records up to step 5 are the first process's own (their tokens/s would differ if redone)
    assert resumed.startswith(paused) and resumed != paused
    steps = [json.loads(line)["step"] for line in resumed.splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 10
    assert json.loads((out / "base" / "summary.json").read_text())["steps"] == 10
    assert (out / "report.md").is_file()
