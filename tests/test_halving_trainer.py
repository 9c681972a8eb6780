"""`laggrow probe --halving`: successive halving trained, against its replay on the full pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import invoke_ok
from laggrow import analysis, store
from laggrow.cli import app

POOL = {
    "target": {"n_layers": 3},
    "strategies": ["stack", "zero_top", "scratch", {"name": "stack_noise", "noise": 0.05}],
    "seeds": [0, 1],
    "lag_steps": 4,
    "final_steps": 8,
    "eval_points": 4,
    "eval_every": 1,
    "train": {"lr": 0.003, "warmup_steps": 2},
    "halving": {"eta": 2, "first": 2},
}


@pytest.fixture(scope="module")
def runs_(tmp_path_factory, tiny_base_run):
    """The pool trained to T (probe + train-final) and the same pool run by successive halving."""
    directory = tmp_path_factory.mktemp("halving")
    path = directory / "pool.yaml"
    path.write_text(yaml.safe_dump({**POOL, "source": str(tiny_base_run)}))
    full, halved = directory / "full", directory / "halved"
    invoke_ok("probe", path, "--out", full)
    invoke_ok("train-final", full)
    output = invoke_ok("probe", path, "--out", halved, "--halving").output
    return full, halved, output


def test_halving_trains_what_its_replay_on_the_full_pool_decides(runs_):
    full, halved, output = runs_
    record = json.loads((halved / store.HALVING_FILE).read_text())
    replay = analysis.replay_halving(analysis.load_curves(full), eta=2, first=2)
    # 4 strategies: step 2 keeps 2, step 4 keeps 1
    assert [len(r["survivors"]) for r in record["rounds"]] == [4, 2]
    assert [r["kept"] for r in record["rounds"]] == [r["kept"] for r in replay["rounds"]]
    assert record["winner"] == replay["winner"] and f"winner: {record['winner']}" in output
    # charged candidate by candidate, 2 seeds each: two strategies 2 steps, two 4 steps
    assert record["candidate_steps"] == 2 * (2 + 2 + 4 + 4) == replay["candidate_steps"]
    assert record["probe_everyone_k"]["candidate_steps"] == 8 * 4 and record["train_everyone"]["candidate_steps"] == 64
    by_candidate = {c["candidate"]: c for c in record["charged_candidates"]}
    assert all(c["tokens"] == c["steps"] * 8 * 32 for c in by_candidate.values())


def test_halving_records_are_the_prefixes_of_the_full_runs(runs_):
    full, halved, _ = runs_
    full_loss = {(r["candidate"], r["step"]): r["eval_loss"] for r in store.read_jsonl(full / store.CURVES_FILE, "r")}
    record = json.loads((halved / store.HALVING_FILE).read_text())
    charged = {c["candidate"]: c["steps"] for c in record["charged_candidates"]}
    rows = store.read_jsonl(halved / store.CURVES_FILE, "records")
    assert rows and all(r["step"] <= charged[r["candidate"]] for r in rows)  # nothing past its last round
    assert {(r["candidate"], r["step"]) for r in rows} == {(c, s) for c, last in charged.items()
                                                           for s in range(0, last + 1)}
    np.testing.assert_allclose([r["eval_loss"] for r in rows], [full_loss[(r["candidate"], r["step"])] for r in rows],
                               rtol=0, atol=1e-5)


def test_halving_without_its_key_is_one_line(tiny_base_run, tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({**{k: v for k, v in POOL.items() if k != "halving"}, "source": str(tiny_base_run)}))
    result = CliRunner().invoke(app, ["probe", str(path), "--out", str(tmp_path / "out"), "--halving"])
    assert result.exit_code == 2 and "no halving key" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
