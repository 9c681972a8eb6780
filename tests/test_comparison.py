"""Predictors compared, halving replayed, and `correlate --predictor` on hand-made pools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laggrow import analysis
from laggrow.analysis import compare_predictors, correlate, replay_halving
from laggrow.cli import app
from laggrow.errors import LaggrowError

STEPS = [0, 4, 8, 12, 16, 24, 32, 64]
LAG = 16


def crossing_pool(directory: Path, seeds=(0, 1)) -> Path:
    """Five strategies on power laws L(t) = a + b (t+1)^-0.5 whose final order (by a) is the reverse
    of their order at k = 16 for the two steepest: B and A are ahead early (small b) and behind late
    (large a). The loss at k is then fooled; a power-law fit of the segment is not."""
    params = {"A": (1.60, 0.6), "B": (1.55, 1.0), "C": (1.40, 2.4), "D": (1.45, 2.2), "E": (1.70, 0.8)}
    records, candidate = [], 0
    for seed in seeds:
        for strategy, (a, b) in params.items():
            for step in STEPS:
                loss = a + b * (step + 1) ** -0.5 + 0.0005 * seed
                records.append({"candidate": candidate, "strategy": strategy, "seed": seed, "step": step,
                                "eval_loss": loss, "tokens": 10 * step, "flops": 1e3 * step, "diverged": False})
            candidate += 1
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (directory / "probe.json").write_text(json.dumps({"lag_steps": LAG, "final_steps": STEPS[-1], "candidates": []}))
    return directory


def final_losses():
    # by hand: a + b * 65**-0.5, 65**-0.5 = 0.124035
    return {"A": 1.60 + 0.6 * 0.124035, "B": 1.55 + 1.0 * 0.124035, "C": 1.40 + 2.4 * 0.124035,
            "D": 1.45 + 2.2 * 0.124035, "E": 1.70 + 0.8 * 0.124035}


def test_loss_is_fooled_where_extrapolation_is_not(tmp_path):
    curves = analysis.load_curves(crossing_pool(tmp_path))
    final = final_losses()  # C 1.6977, D 1.7229, B 1.6740, A 1.6744, E 1.7992: B best
    best = min(final, key=final.get)
    at_k = {s: a + b * 17 ** -0.5 for s, (a, b) in
            {"A": (1.60, 0.6), "B": (1.55, 1.0), "C": (1.40, 2.4), "D": (1.45, 2.2), "E": (1.70, 0.8)}.items()}
    lag_pick = min(at_k, key=at_k.get)  # at 16: A 1.7455, B 1.7925, C 1.9821, D 1.9836, E 1.8940: A
    assert (best, lag_pick) == ("B", "A")
    by_loss = correlate(curves, n_boot=0, predictor="loss")
    row = by_loss.rows[by_loss.steps.index(LAG)]
    assert row.leaders == ["A"] and row.regret == pytest.approx(final["A"] - final["B"], abs=1e-6)
    by_fit = correlate(curves, n_boot=0, predictor="extrapolate")
    row = by_fit.rows[by_fit.steps.index(LAG)]
    assert by_fit.predictor == "extrapolate" and row.leaders == ["B"] and row.regret == pytest.approx(0, abs=1e-9)
    assert row.spearman == pytest.approx(1.0)


def test_compare_predictors_lays_every_predictor_side_by_side(tmp_path):
    curves = analysis.load_curves(crossing_pool(tmp_path))
    comparison = compare_predictors(curves, regret_tol=0.0)
    names = [p["predictor"] for p in comparison["predictors"]]
    assert names[0] == "loss" and {"window", "slope", "extrapolate"} <= set(names)
    by_name = {p["predictor"]: p for p in comparison["predictors"]}
    assert by_name["loss"]["at_k"]["leaders"] == ["A"] and by_name["extrapolate"]["at_k"]["leaders"] == ["B"]
    # every step and predictor has the row of its own correlate run
    direct = correlate(curves, n_boot=0, regret_tol=0.0, predictor="window")
    for j, step in enumerate(direct.steps):
        assert comparison["steps"][j]["step"] == step
        assert comparison["steps"][j]["window"]["spearman"] == direct.rows[j].spearman
    assert by_name["window"]["little_lag"] == direct.little_lag["step"]


def test_replayed_halving_follows_the_loss_and_charges_candidate_steps(tmp_path):
    curves = analysis.load_curves(crossing_pool(tmp_path))
    replay = replay_halving(curves, eta=2, first=4, predictor="loss")
    # 5 strategies: step 4 keeps 3, step 8 keeps 2, step 16 keeps 1. By the loss at each budget
    # (b small first): at 4, A 1.8683, B 1.9972, E 2.0578 (C 2.4733, D 2.4339 dropped); at 8, A 1.8, B 1.8833
    # (E 1.9667 dropped); at 16 A 1.7455 beats B 1.7925.
    assert [r["kept"] for r in replay["rounds"]] == [["A", "B", "E"], ["A", "B"], ["A"]]
    assert replay["winner"] == "A" and replay["regret"] == pytest.approx(final_losses()["A"] - final_losses()["B"],
                                                                          abs=1e-6)
    # two seeds per strategy: C, D 4 steps; E 8; A, B 16 -> 2 x (4 + 4 + 8 + 16 + 16) = 96
    assert replay["candidate_steps"] == 96
    assert replay["probe_everyone_k"]["candidate_steps"] == 10 * LAG
    assert replay["train_everyone"]["candidate_steps"] == 10 * 64
    assert replay["fraction_of_train_everyone"] == pytest.approx(96 / 640)


def test_replay_needs_every_budget_evaluated(tmp_path):
    curves = analysis.load_curves(crossing_pool(tmp_path))
    with pytest.raises(LaggrowError, match="no survivor has a finite loss at step 3"):
        replay_halving(curves, eta=2, first=3)  # budgets 3, 6, 12: 3 is not evaluated


def test_correlate_cli_predictor_and_halving(tmp_path):
    pool = crossing_pool(tmp_path)
    result = CliRunner().invoke(app, ["correlate", str(pool), "--bootstrap", "0", "--predictor", "extrapolate",
                                      "--halving-first", "4"])
    assert result.exit_code == 0, result.output
    assert "Predictors of the loss at step 64" in result.output and "successive halving" in result.output
    written = json.loads((pool / "correlation.json").read_text())
    assert written["predictor"] == "extrapolate" and written["halving"]["predictor"] == "extrapolate"
    assert {p["predictor"] for p in written["predictors"]["predictors"]} >= {"loss", "extrapolate"}


@pytest.mark.parametrize(("args", "message"), [
    (["--predictor", "oracle"], "predictor 'oracle': unknown (expected one of: loss"),
    (["--halving-first", "4", "--halving-eta", "1"], "--halving-eta: expected an integer >= 2, got 1"),
    (["--halving-first", "65"], "--halving-first: expected an integer in [1, final_steps=64], got 65"),
])
def test_bad_predictor_or_halving_options_are_one_line(tmp_path, args, message):
    pool = crossing_pool(tmp_path)
    result = CliRunner().invoke(app, ["correlate", str(pool), "--bootstrap", "0", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (pool / "correlation.json").exists()
