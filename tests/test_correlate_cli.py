"""`laggrow correlate` end to end on hand-made pool directories: table, --json, files, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laggrow.cli import app

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]
LAG = 16
OUTPUTS = ("correlation.json", "correlation.csv", "correlation.png", "curves.png", "ranks.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pool_records(up_to: int = STEPS[-1], strategies: str = "ABCDE", seeds=(0, 1)) -> list[dict]:
    """Strategies whose final order is alphabetical, with step 0 reversed and the order found by
    step 8; two seeds each, a little apart."""
    records, candidate = [], 0
    for seed in seeds:
        for i, strategy in enumerate(strategies):
            final = 2.0 + 0.1 * i + 0.001 * seed
            start = 3.0 - 0.1 * i + 0.001 * seed  # reversed at initialisation
            for step in STEPS:
                if step > up_to:
                    break
                loss = start if step < 8 else final + (start - final) / step
                records.append({"candidate": candidate, "strategy": strategy, "seed": seed, "step": step,
                                "eval_loss": loss, "train_loss": None, "tokens": 64 * step,
                                "flops": 1e6 * step, "diverged": False})
            candidate += 1
    return records


def write(directory: Path, records: list[dict], lag: int | None = LAG) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if lag is not None:
        (directory / "probe.json").write_text(json.dumps({"lag_steps": lag, "final_steps": STEPS[-1],
                                                          "candidates": []}))
    return directory


def invoke(*args: str):
    return CliRunner().invoke(app, ["correlate", *args])


def test_table_names_the_little_lag_and_writes_everything(tmp_path):
    pool = write(tmp_path, pool_records())
    result = invoke(str(pool), "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    assert "0 init" in result.output and "128 final" in result.output and "16 lag" in result.output
    assert "little lag: step 8" in result.output
    assert "Final loss against the best" in result.output
    assert "best at step 128: A; cannot be told from it: A (" in result.output
    for name in OUTPUTS:
        assert (pool / name).is_file(), name
    for name in OUTPUTS[2:]:
        assert (pool / name).read_bytes()[:8] == PNG_MAGIC, name
        assert (pool / name).stat().st_size > 5000, name
    data = json.loads((pool / "correlation.json").read_text())
    assert {"final_step", "rows", "little_lag"} <= data.keys() and data["final_step"] == 128
    assert {"step", "spearman", "kendall", "pearson", "top1", "in_best_set", "regret"} <= data["rows"][0].keys()
    assert data["schema"] == "laggrow.correlation/2" and data["best_set"]["members"] == ["A"]
    assert data["little_lag"]["step"] == 8
    assert data["rows"][0]["spearman"] == pytest.approx(-1.0)  # reversed at initialisation
    assert data["bootstrap"]["n"] == 200
    with (pool / "correlation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == STEPS
    assert float(rows[0]["spearman"]) == pytest.approx(-1.0)
    assert not list(pool.glob(".*.tmp"))  # no staging files left behind


def test_json_prints_the_result_instead_of_the_table(tmp_path):
    pool = write(tmp_path, pool_records())
    result = invoke(str(pool), "--json", "--bootstrap", "50", "--seed", "7", "--threshold", "0.95")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((pool / "correlation.json").read_text())
    assert printed["bootstrap"]["seed"] == 7 and printed["little_lag"]["threshold"] == 0.95
    assert "little lag:" not in result.stdout


def test_final_step_and_regret_tolerance_options(tmp_path):
    pool = write(tmp_path, pool_records())
    result = invoke(str(pool), "--json", "--bootstrap", "0", "--final-step", "32", "--regret-tol", "0.05")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["final_step"] == 32 and data["rows"][-1]["step"] == 32
    assert data["little_lag"]["regret_tol"] == 0.05 and data["little_lag"]["rule"] == "regret <= 0.05 (given)"
    assert data["rows"][0]["spearman_ci"] is None


def test_probe_only_reports_stability_and_asks_for_train_final(tmp_path):
    pool = write(tmp_path, pool_records(up_to=LAG))
    result = invoke(str(pool))
    assert result.exit_code == 0, result.output
    assert "Ranking stability up to step 16" in result.output
    assert "needs `laggrow train-final`" in result.output
    assert not (pool / "correlation.json").exists()
    assert (pool / "ranks.png").read_bytes()[:8] == PNG_MAGIC
    printed = json.loads(invoke(str(pool), "--json").stdout)
    assert printed["schema"] == "laggrow.stability/2" and printed["last_step"] == LAG


def test_diverged_candidate_is_reported(tmp_path):
    records = pool_records()
    records = [r for r in records if not (r["candidate"] == 0 and r["step"] > 4)]
    records.append({**records[0], "step": 8, "eval_loss": None, "diverged": True})
    result = invoke(str(write(tmp_path, records)), "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    assert "A seed 0 (candidate 0), diverged at step 8" in " ".join(result.output.split())


def _malformed(tmp_path: Path) -> Path:
    pool = write(tmp_path, pool_records())
    lines = (pool / "curves.jsonl").read_text().splitlines()
    lines[6] = lines[6][:20]  # a line cut short, as by a crash mid-write
    (pool / "curves.jsonl").write_text("\n".join(lines) + "\n")
    return pool


def _stacking_dir(tmp_path: Path) -> Path:
    from laggrow import store

    (tmp_path / store.STACK_CONFIG_FILE).write_text("{}")
    (tmp_path / store.CURVES_FILE).write_text(json.dumps({"method": "top", "seed": 0, "step": 0}) + "\n")
    return tmp_path


@pytest.mark.parametrize("make, args, message", [
    (lambda p: p / "nowhere", [], "nowhere: not found; expected a pool directory"),
    (lambda p: p, [], "curves.jsonl: not found; expected the per-step records"),
    (_malformed, [], "curves.jsonl line 7: malformed"),
    (lambda p: write(p, pool_records(strategies="AB")), [], "2 strategies with a loss at step 128"),
    (lambda p: write(p, pool_records()), ["--final-step", "100"], "final step 100: no candidate"),
    (lambda p: write(p, pool_records()), ["--threshold", "2"], "threshold 2.0: expected a correlation"),
    # a correlation against step 0 has no step before it: rho 1.00 of nothing, over correlation.json
    (lambda p: write(p, pool_records()), ["--final-step", "0"], "final step 0: no evaluated step before it"),
    # an eta without the first round replays nothing: refused, not ignored
    (lambda p: write(p, pool_records()), ["--halving-eta", "1"], "--halving-eta: given without --halving-first"),
    (lambda p: write(p, pool_records()), ["--halving-first", "4", "--halving-eta", "1"],
     "--halving-eta: expected an integer >= 2, got 1"),
    # refused alike on a finished pool and on a probe-only one (which has no curves to T to replay it on)
    (lambda p: write(p, pool_records()), ["--halving-first", "1000"], "--halving-first: expected an integer in [1, "
                                                                       "final_steps=128]"),
    (lambda p: write(p, pool_records(up_to=LAG)), ["--halving-first", "1000"],
     "holds no finals to replay successive halving on"),
    (lambda p: write(p, pool_records(up_to=LAG)), ["--halving-first", "4"], "holds no finals to replay successive "
                                                                            "halving on"),
    (_stacking_dir, [], "a stacking directory (laggrow stack), not a pool"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, args, message):
    pool = make(tmp_path)
    result = invoke(str(pool), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not any((tmp_path / name).exists() for name in OUTPUTS)  # nothing half-written


def test_extrapolate_says_when_it_fell_back_to_the_window_mean(tmp_path):
    # at k = 16 a curve evaluated at 0 1 2 4 8 16 has three points at steps >= 16 // 4: too few to fit
    result = invoke(str(write(tmp_path, pool_records())), "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    fell = {p["predictor"]: p["fell_back_at_k"]
            for p in json.loads((tmp_path / "correlation.json").read_text())["predictors"]["predictors"]}
    assert fell["extrapolate"] == {"step": LAG, "candidates": 10, "fell_back": 10,
                                   "reasons": {"fewer than 4 points to fit": 10}}
    assert fell["loss"] is None  # it has nothing to fall back to
    assert "extrapolate fell back to the window mean for 10 of 10 candidates at k = 16" in \
        " ".join(result.output.split())


def test_outputs_are_all_or_nothing(tmp_path):
    from laggrow.store import write_outputs

    def fail(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("figure failed")

    (tmp_path / "a.json").write_text("old")
    with pytest.raises(RuntimeError):
        write_outputs(tmp_path, {"a.json": lambda p: p.write_text("new"), "b.png": fail})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"  # the previous output survives intact


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["correlate", "--help"])
    assert result.exit_code == 0
    for option in ("--final-step", "--threshold", "--regret-tol", "--bootstrap", "--seed", "--json"):
        assert option in result.output


def test_ranking_table_for_probe():
    from rich.console import Console

    from laggrow.report.tables import ranking_table

    rows = [{"rank": 1, "strategy": "stack", "function_preserving": False, "eval_loss_init": 4.1,
             "eval_loss": 2.5, "gap": 0.0, "diverged": False},
            {"rank": 2, "strategy": "identity", "function_preserving": True, "eval_loss_init": 3.0,
             "eval_loss": None, "gap": None, "diverged": True}]
    console = Console(width=100, record=True)
    console.print(ranking_table(rows, title="probe"))
    text = console.export_text()
    assert "stack" in text and "+0.0000" in text and "2.5000" in text and "4.1000" in text
    assert "identity" in text and "diverged" in text and "yes" in text
