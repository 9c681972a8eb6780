"""Answers a researcher can trust: ties within what the evaluation resolves, noise measured per
comparison, picks judged against the set that cannot be told from the best, choices on the
selection set and results on the test set. Hand-made records with known answers, through the same
`correlate` that `laggrow correlate` runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from laggrow.analysis import correlate, load_curves, noise
from laggrow.analysis.comparison import replay_halving


def write(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def record(candidate: int, strategy: str, seed: int, step: int, loss: float, test: float | None = None,
           windows: list[float] | None = None, test_windows: list[float] | None = None) -> dict:
    out = {"candidate": candidate, "strategy": strategy, "seed": seed, "step": step, "eval_loss": loss,
           "train_loss": None, "tokens": step * 64, "flops": step * 1e6, "diverged": False}
    if test is not None:
        out["test_loss"] = test
    if windows is not None:
        out["eval_windows"] = windows
    if test_windows is not None:
        out["test_windows"] = test_windows
    return out


def row(result, step):
    return next(r for r in result.rows if r.step == step)


# ---- the primitives, by hand --------------------------------------------------------------------

def test_paired_window_se_cancels_what_the_windows_share():
    hard = np.array([1.0, 3.0, 2.0, 6.0])  # windows of very different difficulty
    a, b = hard + 0.10, hard + np.array([0.0, 0.02, -0.02, 0.0])
    diff = a - b
    assert noise.paired_window_se(a, b) == pytest.approx(diff.std(ddof=1) / 2)
    assert noise.paired_window_se(a, b) < 0.02 < noise.se_over_windows(a)  # unpaired it would be ~1
    two_seeds = np.stack([a, a + 0.2])  # a strategy of two seeds: its per-window mean first
    assert noise.paired_window_se(two_seeds, b) == pytest.approx(noise.se_over_windows(a + 0.1 - b))
    assert noise.paired_window_se(a, b[:3]) is None


def test_paired_seed_se_uses_only_the_two_strategies_and_their_common_seeds():
    a, b = {0: 1.00, 1: 1.10, 2: 1.30}, {0: 1.02, 1: 1.12, 2: 1.33, 3: 9.0}
    assert noise.paired_seed_se(a, b) == pytest.approx(np.std([-0.02, -0.02, -0.03], ddof=1) / math.sqrt(3))
    assert noise.paired_seed_se({0: 1.0}, {0: 2.0}) is None
    assert noise.combined_se(0.3, 0.4) == pytest.approx(0.5) and noise.combined_se(None, None) is None


def test_tie_groups_chain_and_ranks_share():
    values = np.array([1.0, 1.0 + 1e-7, 2.0, 2.05, 2.1, 5.0])
    tol = np.full((6, 6), 0.06)
    tol[:2, :2] = noise.float_tolerance(1.0, 1.0)
    assert noise.tie_groups(values, tol) == [[0, 1], [2, 3, 4], [5]]  # 2.0 ~ 2.05 ~ 2.1: chained
    assert noise.tied_ranks(values, tol).tolist() == [1, 1, 3, 3, 3, 6]
    assert noise.tied_ranks(values, tol, "average").tolist() == [1.5, 1.5, 4, 4, 4, 6]
    assert noise.leaders(values, tol).tolist() == [0, 1]


# ---- 1. ties decided by float noise ------------------------------------------------------------

def test_float_rounding_ties_are_ties_at_every_level(tmp_path):
    """The issue's two loss-preserving strategies, 2.4e-7 apart at step 0: choosing at
    initialisation picks either with probability 1/2, so it hits the best with probability 1/2 and
    its regret is the mean of the two."""
    at_init = {"copy_zero": 1.6273791790, "zero_top": 1.6273794174, "stack": 1.70, "scratch": 5.6}
    final = {"copy_zero": 1.5010, "zero_top": 1.5026, "stack": 1.5100, "scratch": 2.2}
    records = [record(i, s, 0, step, loss) for i, s in enumerate(at_init)
               for step, loss in ((0, at_init[s]), (100, final[s]))]
    result = correlate(load_curves(write(tmp_path, records)), n_boot=0)
    init = row(result, 0)
    assert init.leaders == ["copy_zero", "zero_top"]
    assert init.top1 == pytest.approx(0.5)
    assert init.regret == pytest.approx((0 + 0.0016) / 2)
    ranks = {s["strategy"]: s["rank"][0] for s in result.strategies}
    assert ranks["copy_zero"] == ranks["zero_top"] == 1 and ranks["stack"] == 3
    # with no tie taken, rho at init would count the 2.4e-7 as an order: ranks 1, 2, 3, 4 = perfect
    assert init.spearman == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])


# ---- 2. seed noise never inflated by a baseline out of contention ------------------------------

QUIET = {"A": 1.600, "B": 1.604, "C": 1.630}  # B - A = 0.004 on every seed, give or take 0.0005


def noisy_baseline_pool(directory: Path) -> Path:
    records, i = [], 0
    jitter = [0.0, 0.0005, -0.0005]
    for name, base in {**QUIET, "scratch": 2.3}.items():
        for seed in range(3):
            shift = 0.01 * seed  # a seed shifts every strategy alike (shared batches)
            loss = base + shift + (jitter[seed] if name == "B" else 0.0)
            if name == "scratch":
                loss += [0.0, 0.09, -0.05][seed]  # several times the growth strategies' spread
            records += [record(i, name, seed, 0, 3.0 + i * 0.01), record(i, name, seed, 50, loss + 0.1),
                        record(i, name, seed, 100, loss)]
            i += 1
    return write(directory, records)


def test_a_noisy_baseline_does_not_inflate_the_noise_of_a_comparison(tmp_path):
    result = correlate(load_curves(noisy_baseline_pool(tmp_path)), n_boot=0)
    comparison = {c["strategy"]: c for c in result.best_set["comparisons"]}
    b = comparison["B"]
    assert b["diff"] == pytest.approx(0.004)
    assert b["seed_se"] == pytest.approx(np.std([0.0, 0.0005, -0.0005], ddof=1) / math.sqrt(3))
    assert result.best_set["members"] == ["A"]  # 0.004 is 14 SEs: B can be told from A
    # the spread a regret is a share of is the growth strategies' (0.030), not scratch's (~0.7)
    assert result.little_lag["spread"] == pytest.approx(0.030)
    assert "scratch" in result.little_lag["spread_of"]
    k = row(result, 50)
    assert k.leaders == ["A"] and k.regret == 0 and k.in_best_set == 1.0


# ---- 3. evaluation noise measured, and picks judged by the best set -----------------------------

def windows_pool(directory: Path, gap: float, noise_scale: float) -> Path:
    """Three strategies, one seed, 64 windows: B is `gap` worse than A on average with per-window
    differences of spread `noise_scale`; C is clearly worse. At step 10 (the probe) B leads."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(1.0, 3.0, 64)
    per_window = {"A": difficulty, "B": difficulty + gap + noise_scale * rng.standard_normal(64),
                  "C": difficulty + 0.5}
    records = []
    for i, (name, w) in enumerate(per_window.items()):
        at_probe = {"A": 2.31, "B": 2.30, "C": 2.90}[name]
        records += [record(i, name, 0, 10, at_probe, at_probe, [at_probe] * 64, [at_probe] * 64),
                    record(i, name, 0, 100, float(w.mean()), float(w.mean()), list(w), list(w))]
    return write(directory, records)


def test_a_pick_within_the_evaluation_noise_lands_in_the_best_set(tmp_path):
    result = correlate(load_curves(windows_pool(tmp_path, gap=0.002, noise_scale=0.05)), n_boot=0)
    b = next(c for c in result.best_set["comparisons"] if c["strategy"] == "B")
    assert 0.004 < b["eval_se"] < 0.009 and b["indistinguishable"]
    assert result.best_set["members"] == ["A", "B"]
    probe = row(result, 10)
    assert probe.leaders == ["B"] and probe.regret > 0  # not the best, but not distinguishable from it
    assert probe.in_best_set == 1.0
    # A and B are within the evaluation's noise at T, so they tie for best: top-1 holds too
    assert probe.top1 == 1.0
    # the median over B (0.006) and C (0: exactly 0.5 worse on every window)
    assert result.noise["eval_se_of_a_difference"] == pytest.approx(b["eval_se"] / 2)


def test_a_pick_beyond_the_evaluation_noise_lands_outside(tmp_path):
    result = correlate(load_curves(windows_pool(tmp_path, gap=0.02, noise_scale=0.005)), n_boot=0)
    assert result.best_set["members"] == ["A"]
    probe = row(result, 10)
    assert probe.leaders == ["B"] and probe.in_best_set == 0.0 and probe.top1 == 0.0
    assert probe.regret == pytest.approx(0.02, abs=0.002)


def test_the_report_says_when_the_held_out_set_is_too_small(tmp_path):
    """Two seeds that agree to 1e-4 against an evaluation noise of ~6e-3: the windows, not the
    seeds, limit what can be told apart."""
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(1.0, 3.0, 16)
    records, i = [], 0
    for name, gap in (("A", 0.0), ("B", 0.004), ("C", 0.3)):
        for seed in (0, 1):
            w = difficulty + gap + 0.02 * rng.standard_normal(16) + 1e-4 * seed
            records += [record(i, name, seed, 0, 3.0, 3.0), record(i, name, seed, 20, float(w.mean()),
                                                                    float(w.mean()), list(w), list(w))]
            i += 1
    result = correlate(load_curves(write(tmp_path, records)), n_boot=0)
    assert result.noise["eval_below_seed_noise"] is False
    assert any("held-out set is too small" in n and "data.eval_batches" in n for n in result.notes)


# ---- 4. choices on the selection set, results on the test set ------------------------------------

def test_choices_read_the_selection_set_and_results_the_test_set(tmp_path):
    """The selection set ranks C, B, A at every step; the test set says A, B, C at the end. The
    final losses, the best and the regret are the test set's; the ranking at each step is the
    selection set's."""
    selection = {"A": [3.0, 2.3, 2.2], "B": [3.0, 2.2, 2.1], "C": [3.0, 2.1, 2.0]}
    test = {"A": [3.1, 2.5, 1.9], "B": [3.1, 2.5, 2.0], "C": [3.1, 2.5, 2.4]}
    records = [record(i, s, 0, step, selection[s][j], test[s][j])
               for i, s in enumerate("ABC") for j, step in enumerate((0, 10, 100))]
    result = correlate(load_curves(write(tmp_path, records)), n_boot=0)
    final = {s["strategy"]: s["final_loss"] for s in result.strategies}
    assert final == pytest.approx({"A": 1.9, "B": 2.0, "C": 2.4})
    assert result.best_set["best"] == "A"
    probe = row(result, 10)
    assert probe.leaders == ["C"] and probe.regret == pytest.approx(0.5) and probe.spearman == pytest.approx(-1)
    # even at T, the selection set's ranking is compared with the test set's
    assert row(result, 100).leaders == ["C"]
    assert not any("one held-out set" in n for n in result.notes)
    replay = replay_halving(load_curves(tmp_path), eta=3, first=10)  # one round, at step 10
    assert replay["winner"] == "C" and replay["regret"] == pytest.approx(0.5) and not replay["in_best_set"]


def test_records_with_one_held_out_set_say_so(tmp_path):
    records = [record(i, s, 0, step, loss) for i, s in enumerate("ABC")
               for step, loss in ((0, 3.0), (100, 2.0 + i))]
    result = correlate(load_curves(write(tmp_path, records)), n_boot=0)
    assert result.noise["reported_on"] == "selection"
    assert any("one held-out set" in n for n in result.notes)
