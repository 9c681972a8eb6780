"""`laggrow run` with `pools:`: one tiny base grown into two pools (configs/tiny_pools_experiment.yaml),
interrupted between them and resumed, reported per pool; bad input named by its pool."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import finish, invoke_in_repo, invoke_in_repo_ok, one_line_failure, snapshot, start_laggrow
from laggrow import store

REPO = Path(__file__).resolve().parent.parent
POOLS = REPO / "configs" / "tiny_pools_experiment.yaml"
NAMES = ("x1.5", "x2")
STRATEGIES = {"x1.5": {"stack", "zero_top", "scratch"}, "x2": {"stack", "copy_zero", "scratch"}}
FIGURES = ("correlation.png", "curves.png", "ranks.png", "curves-growth.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

invoke, ok = invoke_in_repo, invoke_in_repo_ok


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A real `laggrow run` Ctrl-C'ed as the second pool's probe starts, then the same command
    again: (OUT, the first pool and the base as the interrupted run left them, the second output)."""
    out = tmp_path_factory.mktemp("pools") / "ex"
    proc = start_laggrow("run", str(POOLS), "--out", str(out), stdout=subprocess.DEVNULL, fault="staged:x2=SIGINT")
    stderr = finish(proc)
    assert proc.returncode == 130, stderr
    assert "stopped in the probe stage of pools.x2, the probe will start again" in " ".join(stderr.split()), stderr
    left = {name: snapshot(out / part) for name, part in (("base", "base"), ("x1.5", "pools/x1.5"))}
    second = ok("run", POOLS, "--out", out)
    return out, left, second


def test_an_interrupted_run_resumes_at_the_second_pool_and_redoes_nothing_of_the_first(resumed):
    out, left, second = resumed
    assert "correlation.json" in left["x1.5"] and "final.json" in left["x1.5"], "x1.5 was finished"
    for stage in ("base", "probe x1.5", "finals x1.5", "correlate x1.5"):
        assert f"{stage:<9} reused" in second.output, second.output
    for stage in ("probe x2", "finals x2", "correlate x2", "report"):
        assert f"{stage:<9} done in" in second.output, second.output
    # every record of x1.5 as the first run left it; the report has drawn its curves without scratch since
    resumed_x15 = {k: v for k, v in snapshot(out / "pools" / "x1.5").items() if k != store.GROWTH_CURVES_PNG}
    assert snapshot(out / "base") == left["base"] and resumed_x15 == left["x1.5"]
    assert not list((out / "pools").glob(".x2.*.partial")), "the interrupted probe left nothing"


def test_each_pool_has_its_records_beside_its_yaml_and_none_at_the_single_pool_place(resumed):
    out, _, _ = resumed
    assert not (out / "pool").exists() and not (out / "pool.yaml").exists()
    assert sorted(p.name for p in (out / "pools").iterdir()) == ["x1.5", "x1.5.yaml", "x2", "x2.yaml"]
    for name, layers in zip(NAMES, (3, 4), strict=True):
        pool_dir = out / "pools" / name
        written = yaml.safe_load((out / "pools" / f"{name}.yaml").read_text())
        assert written["source"] == str(out / "base") and written["target"] == {"n_layers": layers}
        assert json.loads((pool_dir / "config.json").read_text())["model"]["n_layers"] == layers
        final = json.loads((pool_dir / "final.json").read_text())
        assert final["final_steps"] == 8 and {c["strategy"] for c in final["candidates"]} == STRATEGIES[name]
        assert json.loads((pool_dir / "pool.json").read_text())["pool_file"] == str(out / "pools" / f"{name}.yaml")
        correlation = json.loads((pool_dir / "correlation.json").read_text())
        assert {s["strategy"] for s in correlation["strategies"]} == STRATEGIES[name]
        for figure in FIGURES:
            assert (pool_dir / figure).read_bytes()[:8] == PNG_MAGIC, (name, figure)
    record = json.loads((out / "experiment.json").read_text())
    assert record["pools"] == list(NAMES) and "pool_dir" not in record and "pool" not in record["config"]
    assert set(json.loads((out / "timings.json").read_text())) == {
        "base", "report", *(f"{stage} {name}" for name in NAMES for stage in ("probe", "finals", "correlate"))}


def test_the_report_has_a_section_per_pool_and_renders_again(resumed):
    out, _, _ = resumed
    report = (out / "report.md").read_text()
    base_at = report.index("## The small model")
    sections = [report.index(f"## Pool `{name}`: {layers} layers") for name, layers in zip(NAMES, (3, 4), strict=True)]
    assert base_at < sections[0] < sections[1] < report.index("## Time on this machine")
    for name, start, end in ((NAMES[0], sections[0], sections[1]), (NAMES[1], sections[1], len(report))):
        section = report[start:end]
        for heading in ("### The pool", "### Step 0 against step k", "### The little lag", "### The pick"):
            assert heading in section, (name, heading)
        assert "LAG at k = 4 picks" in section
        for figure in FIGURES:
            assert f"(pools/{name}/{figure})" in section, (name, figure)
        table = [line.split("`")[1] for line in section.split("| in best set |")[1].split("\n\n")[0].splitlines()
                 if line.startswith("| `")]
        assert sorted(table) == sorted(STRATEGIES[name]), (name, table)  # the pool's table: its own strategies
    assert "| probe x2 |" in report and "| correlate x1.5 |" in report
    (out / "report.md").unlink()
    ok("report", out)
    assert (out / "report.md").read_text() == report


def test_a_second_run_redoes_nothing(resumed):
    out, _, _ = resumed
    before = snapshot(out)
    again = ok("run", POOLS, "--out", out)
    assert "done in" not in again.output and f"{'correlate x2':<9} reused" in again.output
    assert snapshot(out) == before


def test_a_pool_changed_since_its_probe_is_refused_by_name(resumed):
    out, _, _ = resumed
    before = snapshot(out)
    line = one_line_failure(invoke("run", POOLS, "--out", out, "--set", "pools.x2.lag_steps=3"),
                            "pools.x2 changed since the probe")
    assert "(lag_steps)" in line and "x1.5" not in line
    line = one_line_failure(invoke("run", POOLS, "--out", out, "--set", "pools.x1.5.train.lr=0.01"),
                            "pools.x1.5 changed since the probe")
    assert "(train)" in line
    one_line_failure(invoke("run", POOLS, "--out", out, "--set", "pools.x3.lag_steps=3"),
                     "names no pool of the experiment's pools (expected pools.NAME.key=value with NAME one of: "
                     "x1.5, x2)")
    assert snapshot(out) == before


# ---- bad input: nothing trained, nothing written --------------------------------------------------


def _experiment_file(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(POOLS.read_text())
    raw["base"] = str(POOLS.parent / raw["base"])  # the file is written elsewhere: its base from here
    change(raw)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _set(path: str, value):
    def change(raw: dict) -> None:
        *parents, last = path.split("/")
        for key in parents:
            raw = raw[key]
        raw[last] = value
    return change


def _both(raw: dict) -> None:
    raw["pool"] = raw["pools"]["x2"]


def _neither(raw: dict) -> None:
    del raw["pools"]


def _rename(new):
    def change(raw: dict) -> None:
        raw["pools"] = {new: raw["pools"]["x2"]}
    return change


@pytest.mark.parametrize("change, expected", [
    (_both, "both pool and pools given (expected exactly one"),
    (_neither, "neither pool nor pools given (expected exactly one"),
    (_set("pools", {}), "pools: expected a mapping of pool names to pool mappings, got an empty one"),
    (_set("pools", ["x2"]), "pools: expected a mapping"),
    (_rename("X2"), "pool name 'X2' is not a short identifier"),
    (_rename("a/b"), "pool name 'a/b' is not a short identifier"),
    (_rename(".x"), "pool name '.x' is not a short identifier"),
    (_rename(2), "pool name 2 is not a short identifier"),
    (_set("pools/x2/strategies", ["stack", "scratch"]), "pools.x2.strategies: expected at least 3 strategies"),
    (_set("pools/x2/strategies", ["stack", "stak_top", "scratch"]),
     "pools.x2: strategy 'stak_top': unknown (did you mean 'stack_top'"),
    (_set("pools/x2/source", "runs/x"), "pools.x2: expected a pool mapping without 'source'"),
    (_set("pools/x2", None), "pools.x2: expected a pool mapping without 'source'"),
    (_set("pools/x2/target", {"n_layers": 1}), "pools.x2: model.n_layers: the target (1) is smaller"),
    (_set("pools/x2/lag_steps", 9), "pools.x2.lag_steps: expected an integer in [1, final_steps=8], got 9"),
    (_set("correlate", {"halving": {"first": 3}}), "pools.x1.5 correlate.halving: its rounds end at steps"),
])
def test_bad_pools_fail_with_one_line_naming_the_pool_and_write_nothing(tmp_path, change, expected):
    path = _experiment_file(tmp_path, change)
    one_line_failure(invoke("run", path, "--out", tmp_path / "out"), expected)
    assert not (tmp_path / "out").exists(), "nothing written"


def test_an_experiment_of_the_other_kind_in_out_is_refused(tmp_path):
    # a one-pool experiment's directory (experiment.json, pool/) given to a pools: experiment
    out = tmp_path / "out"
    (out / "pool").mkdir(parents=True)
    store.write_json(out / "experiment.json", {})
    store.write_json(out / "pool" / "probe.json", {})
    before = snapshot(out)
    one_line_failure(invoke("run", POOLS, "--out", out), "holds pool/, written by an experiment with pool:")
    assert snapshot(out) == before
