"""analysis.py / curves.py against hand-computed cases and scipy.stats, on hand-made records."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from laggrow import analysis
from laggrow.analysis import correlate, has_finals, load_curves, noise, ranking_stability
from laggrow.errors import LaggrowError

STEPS = [0, 10, 100]


def write_pool(directory: Path, curves: dict, steps=STEPS, lag=None, final=None, preserving=None,
               flops_scale=None) -> Path:
    """curves: {(strategy, seed): [loss per step]}; a None loss marks the step it diverged on.
    flops_scale: {(strategy, seed): FLOPs per step}; default 1e6 for everyone."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for cand, ((strategy, seed), losses) in enumerate(curves.items()):
        per_step = (flops_scale or {}).get((strategy, seed), 1e6)
        for step, loss in zip(steps, losses, strict=True):
            lines.append({"candidate": cand, "strategy": strategy, "seed": seed, "step": step,
                          "eval_loss": loss, "train_loss": None, "tokens": step * 64,
                          "flops": step * per_step, "diverged": loss is None})
            if loss is None:
                break
    (directory / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if lag is not None:
        (directory / "probe.json").write_text(json.dumps({
            "lag_steps": lag, "final_steps": final,
            "candidates": [{"candidate": i, "strategy": s, "seed": sd,
                            "function_preserving": (preserving or {}).get(s, False)}
                           for i, (s, sd) in enumerate(curves)]}))
    return directory


def four(step0, step10, final=(1.0, 2.0, 3.0, 4.0)) -> dict:
    return {(name, 0): [a, b, c] for name, a, b, c in zip("ABCD", step0, step10, final, strict=True)}


def row(result, step):
    return next(r for r in result.rows if r.step == step)


# ---- reading records ---------------------------------------------------------------------------

def test_records_and_meta_are_read(tmp_path):
    pool = write_pool(tmp_path, four([3, 1, 2, 4], [1, 3, 2, 4]), lag=10, final=100, preserving={"A": True})
    curves = load_curves(pool)
    assert curves.steps.tolist() == STEPS
    assert curves.loss[1].tolist() == [1.0, 3.0, 2.0]
    assert (curves.lag_steps, curves.final_steps) == (10, 100)
    assert [c.function_preserving for c in curves.candidates] == [True, False, False, False]
    assert set(curves.inputs) == {"curves.jsonl", "probe.json"}  # what a correlation is made from


def test_a_candidate_and_step_recorded_twice_is_damage_naming_the_line(tmp_path):
    # a resumed train-final rewrites curves.jsonl up to the step it restored, so it never repeats one:
    # a copy of scratch's final row with another loss was once taken for the final loss, silently
    pool = write_pool(tmp_path, four([3, 1, 2, 4], [1, 3, 2, 4]), lag=10, final=100)
    with (pool / "curves.jsonl").open("a") as f:
        f.write(json.dumps({"candidate": 1, "strategy": "B", "seed": 0, "step": 100, "eval_loss": 0.5}) + "\n")
    with pytest.raises(LaggrowError, match=r"curves.jsonl line 13: candidate 1 \('B' seed 0\) at step 100 again "
                                           r"\(first at line 6\)"):
        load_curves(pool)


def test_a_stacking_directory_is_not_a_pool(tmp_path):
    from laggrow import store

    (tmp_path / store.STACK_CONFIG_FILE).write_text("{}")
    (tmp_path / store.CURVES_FILE).write_text(json.dumps({"method": "top", "seed": 0, "step": 0}) + "\n")
    with pytest.raises(LaggrowError, match="a stacking directory .laggrow stack., not a pool"):
        load_curves(tmp_path)


@pytest.mark.parametrize("line, message", [
    ("{not json", "curves.jsonl line 2: malformed"),
    ("[1, 2]", "curves.jsonl line 2: expected a JSON object"),
    ('{"candidate": 5, "strategy": "E", "seed": 0, "step": 0}', "line 2: missing eval_loss"),
    ('{"candidate": 5, "strategy": "E", "seed": 0, "step": -1, "eval_loss": 1}',
     "line 2: step: expected a non-negative integer, got -1"),
    ('{"candidate": 5, "strategy": "E", "seed": 0, "step": 1, "eval_loss": "low"}',
     "line 2: eval_loss: expected a number, got .low."),
    ('{"candidate": 5, "strategy": "", "seed": 0, "step": 1, "eval_loss": 1}', "strategy: expected a non-empty"),
    ('{"candidate": 5, "strategy": "E", "seed": 0, "step": 1, "eval_loss": 1, "eval_windows": []}',
     "eval_windows: expected a non-empty list"),
    ('{"candidate": 5, "strategy": "E", "seed": 0, "step": 1, "eval_loss": 1, "diverged": 1}',
     "diverged: expected true or false"),
    ('{"candidate": 0, "strategy": "B", "seed": 0, "step": 1, "eval_loss": 1}', "candidate 0 is strategy 'B'"),
    ('{"candidate": 9, "strategy": "A", "seed": 0, "step": 1, "eval_loss": 1}', "one candidate index per"),
    ('{"candidate": 0, "strategy": "A", "seed": 0, "step": 1, "eval_loss": 1' + "0" * 5000 + "}",
     "line 2: holds an integer of 5001 digits"),
])
def test_malformed_records_name_the_line(tmp_path, line, message):
    good = {"candidate": 0, "strategy": "A", "seed": 0, "step": 0, "eval_loss": 3.0}
    (tmp_path / "curves.jsonl").write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(LaggrowError, match=message):
        load_curves(tmp_path)


def _pool_readers():
    """Every reader of a pool's curves.jsonl, as (name, read the directory's records' (candidate, step))."""
    from laggrow.pool import records

    return [("analysis.load_curves", lambda d: [(c.candidate, int(s)) for c in load_curves(d).candidates
                                                for s in load_curves(d).steps]),
            ("pool.records.read_pool_curves",
             lambda d: [(r["candidate"], r["step"]) for r in records.read_pool_curves(d / "curves.jsonl")])]


@pytest.mark.parametrize("reader", range(2), ids=[n for n, _ in _pool_readers()])
def test_every_curves_reader_skips_a_torn_last_line_and_refuses_a_damaged_middle_one(tmp_path, reader):
    # one rule: a last line without its newline is a killed (or still running) writer's, skipped by
    # every reader and cut by the next writer; a damaged complete line is one line naming it
    _, read = _pool_readers()[reader]
    good = [{"candidate": 0, "strategy": "A", "seed": 0, "step": s, "eval_loss": 3.0 - s / 100} for s in (0, 10)]
    text = "".join(json.dumps(r) + "\n" for r in good)
    (tmp_path / "curves.jsonl").write_text(text + '{"candidate": 0, "strategy": "A", "seed": 0, "st')
    assert read(tmp_path) == [(0, 0), (0, 10)]
    # a torn line that happens to parse is still torn: it has no newline
    (tmp_path / "curves.jsonl").write_text(text + json.dumps({**good[0], "step": 100}))
    assert read(tmp_path) == [(0, 0), (0, 10)]
    (tmp_path / "curves.jsonl").write_text(json.dumps(good[0]) + "\n" + '{"candidate": 0, "st\n'
                                           + json.dumps(good[1]) + "\n")
    with pytest.raises(LaggrowError, match=r"curves.jsonl line 2: malformed"):
        read(tmp_path)


def test_missing_or_empty_curves(tmp_path):
    with pytest.raises(LaggrowError, match="curves.jsonl: not found"):
        load_curves(tmp_path)
    (tmp_path / "curves.jsonl").write_text("\n")
    with pytest.raises(LaggrowError, match="no records"):
        load_curves(tmp_path)


def test_divergence_by_flag_null_or_nan(tmp_path):
    lines = [{"candidate": 0, "strategy": "A", "seed": 0, "step": 0, "eval_loss": 3.0},
             {"candidate": 0, "strategy": "A", "seed": 0, "step": 10, "eval_loss": 9.0, "diverged": True},
             {"candidate": 0, "strategy": "A", "seed": 0, "step": 100, "eval_loss": 2.0},  # after: ignored
             {"candidate": 1, "strategy": "B", "seed": 0, "step": 10, "eval_loss": None},
             {"candidate": 2, "strategy": "C", "seed": 0, "step": 100, "eval_loss": math.nan}]
    (tmp_path / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = load_curves(tmp_path / "curves.jsonl")
    assert [c.diverged_at for c in curves.candidates] == [10, 10, 100]
    assert curves.loss[0, 0] == 3.0 and np.isnan(curves.loss[0, 1:]).all()


# ---- point statistics by hand ------------------------------------------------------------------

def test_hand_computed_rows(tmp_path):
    # final A<B<C<D; at step 10 B and C swap; at step 0 A is third and B leads
    result = correlate(load_curves(write_pool(tmp_path, four([3, 1, 2, 4], [1, 3, 2, 4]))), n_boot=0)
    mid = row(result, 10)
    assert mid.spearman == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert mid.kendall == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert mid.pearson == pytest.approx(0.8)  # 4 / sqrt(5 * 5)
    assert (mid.top1, mid.top3, mid.regret, mid.leaders) == (1.0, 1.0, 0.0, ["A"])
    init = row(result, 0)
    assert init.spearman == pytest.approx(0.4)  # d = (2, -1, -1, 0): 1 - 6 * 6 / 60
    assert init.kendall == pytest.approx(1 / 3)  # 4 concordant, 2 discordant
    assert (init.top1, init.top3, init.leaders) == (0.0, 1.0, ["B"])
    assert init.regret == pytest.approx(1.0) and init.regret_frac == pytest.approx(1 / 3)
    assert result.init["spearman"] == init.spearman
    assert row(result, 100).spearman == pytest.approx(1.0)
    assert result.final_step == 100 and result.excluded == []


def test_ties_follow_scipy_and_tied_leaders_share_the_choice(tmp_path):
    result = correlate(load_curves(write_pool(tmp_path, four([3, 3, 3, 3], [1, 1, 2, 3]))), n_boot=0)
    init = row(result, 0)  # every strategy tied at init, as function-preserving growth gives
    assert init.spearman is None and init.kendall is None and init.pearson is None
    assert init.top1 == pytest.approx(0.25) and init.top3 == pytest.approx(0.75)
    assert init.regret == pytest.approx(1.5)  # mean of (1, 2, 3, 4) minus 1
    mid = row(result, 10)  # A and B tied
    x, y = [1, 1, 2, 3], [1, 2, 3, 4]
    assert mid.spearman == pytest.approx(4.5 / math.sqrt(4.5 * 5)) == pytest.approx(stats.spearmanr(x, y)[0])
    assert mid.kendall == pytest.approx(5 / math.sqrt(5 * 6)) == pytest.approx(stats.kendalltau(x, y)[0])
    assert (mid.top1, mid.regret, mid.leaders) == (0.5, 0.5, ["A", "B"])


def test_hit_probability_with_ties_at_the_boundary():
    at_k, final = np.array([1.0, 2, 2, 2, 5]), np.array([2.0, 3, 4, 1, 5])
    groups = noise.tie_groups(at_k, np.zeros((5, 5)))
    best = {int(np.argmin(final))}
    assert noise.hit_probability(groups, best, 3) == pytest.approx(2 / 3)  # 2 slots among 3 tied
    assert noise.hit_probability(groups, best, 1) == 0.0
    assert noise.hit_probability(groups, best, 4) == 1.0


def test_batch_statistics_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, size=(300, 6)).astype(float), rng.integers(0, 5, size=(300, 6)).astype(float)
    x[0], y[1] = 2.0, 3.0  # constant rows: undefined
    got = {"spearman": analysis.batch_spearman(x, y), "kendall": analysis.batch_kendall(x, y),
           "pearson": analysis.batch_pearson(x, y)}
    for i in range(len(x)):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on constant input and returns nan
            want = (stats.spearmanr(x[i], y[i])[0], stats.kendalltau(x[i], y[i])[0], stats.pearsonr(x[i], y[i])[0])
        for name, expected in zip(got, want, strict=True):
            if np.isnan(expected):
                assert np.isnan(got[name][i]), (name, i)
            else:
                assert got[name][i] == pytest.approx(expected, abs=1e-12), (name, i)
        assert analysis.rank_correlations(x[i], y[i]) == tuple(
            None if np.isnan(got[k][i]) else pytest.approx(got[k][i]) for k in got)


# ---- exclusions and bad input ------------------------------------------------------------------

def test_diverged_candidate_is_left_out_and_said_so(tmp_path):
    pool = four([3, 1, 2, 4], [1, 3, 2, 4])
    pool[("E", 0)] = [2.5, None, None]  # diverged at step 10, before the final step
    result = correlate(load_curves(write_pool(tmp_path, pool)), n_boot=0)
    assert result.excluded == [{"candidate": 4, "strategy": "E", "seed": 0, "reason": "diverged at step 10"}]
    assert any("E seed 0" in note and "diverged at step 10" in note for note in result.notes)
    assert [r.n for r in result.rows] == [4, 4, 4]
    assert row(result, 0).spearman == pytest.approx(0.4)  # as without E


def test_fewer_than_three_strategies(tmp_path):
    pool = {("A", 0): [3, 2, 1], ("B", 0): [3, 2, 2], ("C", 0): [3, None, None]}
    with pytest.raises(LaggrowError, match="2 strategies with a loss at step 100 .A, B.; a ranking needs"):
        correlate(load_curves(write_pool(tmp_path, pool)))


def test_final_step_must_be_reached(tmp_path):
    curves = load_curves(write_pool(tmp_path, four([3, 1, 2, 4], [1, 3, 2, 4])))
    with pytest.raises(LaggrowError, match=r"final step 50: no candidate .* \[0, 10, 100\]"):
        correlate(curves, final_step=50)
    early = correlate(curves, final_step=10, n_boot=0)  # against step 10 instead
    assert early.final_step == 10 and [r.step for r in early.rows] == [0, 10]
    assert row(early, 0).spearman == pytest.approx(stats.spearmanr([3, 1, 2, 4], [1, 3, 2, 4])[0])


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"n_boot": -1}, {"regret_tol": -0.1}])
def test_bad_options(tmp_path, kwargs):
    with pytest.raises(LaggrowError):
        correlate(load_curves(write_pool(tmp_path, four([3, 1, 2, 4], [1, 3, 2, 4]))), **kwargs)


def test_has_finals_rule(tmp_path):
    probe_only = write_pool(tmp_path / "p", four([3, 1, 2, 4], [1, 3, 2, 4]), lag=100, final=1000)
    assert not has_finals(load_curves(probe_only))
    with pytest.raises(LaggrowError, match="needs `laggrow train-final`"):
        correlate(load_curves(probe_only))
    assert has_finals(load_curves(write_pool(tmp_path / "f", four([3, 1, 2, 4], [1, 3, 2, 4]), lag=10)))
    assert has_finals(load_curves(write_pool(tmp_path / "n", four([3, 1, 2, 4], [1, 3, 2, 4]))))
    single = {(s, 0): [v] for s, v in zip("ABC", [1.0, 2.0, 3.0], strict=True)}
    assert not has_finals(load_curves(write_pool(tmp_path / "s", single, steps=[0])))


# ---- seeds -------------------------------------------------------------------------------------

SEEDED = {("A", 0): [3.0, 1.0, 1.0], ("A", 1): [3.2, 1.4, 1.2],
          ("B", 0): [2.0, 2.0, 2.0], ("B", 1): [2.2, 2.2, 2.4],
          ("C", 0): [1.0, 2.9, 3.0], ("C", 1): [1.2, 3.1, 3.2],
          ("D", 0): [4.0, 4.1, 4.0], ("D", 1): [4.0, 3.9, 4.2]}


def test_seeds_are_averaged_and_their_spread_reported(tmp_path):
    result = correlate(load_curves(write_pool(tmp_path, SEEDED)), n_boot=0)
    by_name = {s["strategy"]: s for s in result.strategies}
    assert by_name["A"]["final_loss"] == pytest.approx(1.1)
    assert by_name["A"]["loss"] == pytest.approx([3.1, 1.2, 1.1])
    assert by_name["B"]["final_loss_sd"] == pytest.approx(np.std([2.0, 2.4], ddof=1))
    assert by_name["A"]["seeds"] == [0, 1]
    means = {s: np.mean([SEEDED[(s, 0)], SEEDED[(s, 1)]], axis=0) for s in "ABCD"}
    x0, fin = [means[s][0] for s in "ABCD"], [means[s][2] for s in "ABCD"]
    assert row(result, 0).spearman == pytest.approx(stats.spearmanr(x0, fin)[0])
    for seed in (0, 1):  # within each seed, against that seed's own final losses
        want = stats.spearmanr([SEEDED[(s, seed)][0] for s in "ABCD"], [SEEDED[(s, seed)][2] for s in "ABCD"])[0]
        assert row(result, 0).spearman_by_seed[str(seed)] == pytest.approx(want)
    # B against the best, A: per-seed differences (1.0, 1.2), so the paired SE is sd / sqrt(2) = 0.1
    comparison = {c["strategy"]: c for c in result.best_set["comparisons"]}
    assert result.best_set["best"] == "A" and result.best_set["members"] == ["A"]
    assert comparison["B"]["diff"] == pytest.approx(1.1) and comparison["B"]["seed_se"] == pytest.approx(0.1)
    assert comparison["B"]["eval_se"] is None and comparison["B"]["se"] == pytest.approx(0.1)
    assert result.noise["seed_se_of_a_difference"] is not None and result.noise["seeds"] == 2


def test_one_seed_and_no_windows_leave_only_float_rounding(tmp_path):
    result = correlate(load_curves(write_pool(tmp_path, four([3, 1, 2, 4], [1, 3, 2, 4]))), n_boot=0)
    assert result.best_set["members"] == ["A"] and not result.best_set["seed_noise_measured"]
    assert "float rounding only" in result.best_set["rule"]
    assert any("one seed per strategy" in n for n in result.notes)
    assert any("no per-window losses" in n for n in result.notes)
    assert row(result, 0).spearman_by_seed is None


def test_bootstrap_resamples_seeds_and_is_reproducible(tmp_path):
    # means rank A<B<C<D at step 10 and at the end, but seed 1 of B looks worse than C at step 10:
    # only resampling seeds can break the order, so the interval must open below 1
    noisy = {("A", 0): [1, 1.0, 1], ("A", 1): [1, 1.0, 1], ("B", 0): [1, 1.5, 2], ("B", 1): [1, 3.5, 2],
             ("C", 0): [1, 3.0, 3], ("C", 1): [1, 3.0, 3], ("D", 0): [1, 4.0, 4], ("D", 1): [1, 4.0, 4]}
    curves = load_curves(write_pool(tmp_path / "noisy", noisy))
    first = correlate(curves, n_boot=400, seed=3)
    assert row(first, 10).spearman == pytest.approx(1.0)
    low, high = row(first, 10).spearman_ci
    assert low < 0.9 and high == pytest.approx(1.0)
    assert row(correlate(curves, n_boot=400, seed=3), 10).spearman_ci == [low, high]
    assert first.bootstrap == {"n": 400, "seed": 3, "ci_level": 0.95,
                               "resampled": "strategies, and seeds within each strategy"}
    quiet = {k: [1, v[2], v[2]] for k, v in noisy.items()}  # seeds agree: order never breaks
    calm = correlate(load_curves(write_pool(tmp_path / "quiet", quiet)), n_boot=400, seed=3)
    assert row(calm, 10).spearman_ci == pytest.approx([1.0, 1.0])
    assert row(correlate(curves, n_boot=0), 10).spearman_ci is None


# ---- the little lag ----------------------------------------------------------------------------

LAG_STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
FINAL = [1.0, 2.0, 3.0, 4.0, 5.0]  # A < B < C < D < E


def orders(*per_step: str) -> dict:
    """One string per step before the final, strategies best first; the final order is ABCDE."""
    loss = {s: [] for s in "ABCDE"}
    for order in per_step:
        for position, s in enumerate(order):
            loss[s].append(10.0 + position)
    return {(s, 0): [*loss[s], FINAL[i]] for i, s in enumerate("ABCDE")}


def test_little_lag_on_constructed_curves(tmp_path):
    #                        0        1        2        4        8        16       32
    pool = orders("EDCBA", "ABCDE", "BACDE", "ABDCE", "ABCDE", "ABCDE", "ABCDE")
    curves = load_curves(write_pool(tmp_path, pool, steps=LAG_STEPS))
    result = correlate(curves, n_boot=0)
    assert [row(result, s).spearman for s in (0, 2, 4)] == pytest.approx([-1.0, 0.9, 0.9])
    # one adjacent swap gives rho = 1 - 6 * 2 / (5 * 24) = 0.9: at the threshold, which passes;
    # at step 2 the pick (B) is outside the best set (A alone: one seed, no windows), at step 4 it is A
    assert result.little_lag["step"] == 4
    assert [r.settled for r in result.rows] == [False, False, False, True, True, True, True, False]
    assert result.little_lag["compute_fraction"] == pytest.approx(4 / 64)
    assert correlate(curves, n_boot=0, threshold=0.95).little_lag["step"] == 8
    # with a regret of 1 tolerated, step 2 passes too, and so does the right order seen at step 1
    assert correlate(curves, n_boot=0, regret_tol=1.0).little_lag["step"] == 1


def test_little_lag_absent_when_the_ranking_never_settles(tmp_path):
    pool = orders("ABCDE", "ABCDE", "ABCDE", "ABCDE", "ABCDE", "ABCDE", "EDCBA")
    result = correlate(load_curves(write_pool(tmp_path, pool, steps=LAG_STEPS)), n_boot=0)
    assert result.little_lag["step"] is None and result.little_lag["compute_fraction"] is None
    assert not any(r.settled for r in result.rows)


def test_little_lag_function():
    steps, final = [0, 1, 2, 4, 8], 8
    right = [True] * 5
    assert analysis.little_lag(steps, [1.0, 0.2, 0.95, 0.9, 1.0], right, final, 0.9) == 2
    assert analysis.little_lag(steps, [1.0, 1.0, None, 1.0, 1.0], right, final, 0.9) == 4
    assert analysis.little_lag(steps, [1.0] * 5, [True, True, True, False, True], final, 0.9) is None
    assert analysis.little_lag(steps, [1.0] * 5, right, final, 0.9) == 0  # settled at init


def test_compute_fraction_weighs_candidates_by_their_flops(tmp_path):
    # flops are linear in the step for every candidate, so the fraction is k / T whatever the sizes
    pool = orders("ABCDE", "ABCDE", "ABCDE", "ABCDE", "ABCDE", "ABCDE", "ABCDE")
    sizes = {key: 1e6 * (i + 1) for i, key in enumerate(pool)}
    result = correlate(load_curves(write_pool(tmp_path, pool, steps=LAG_STEPS, flops_scale=sizes)), n_boot=0)
    assert [r.compute_fraction for r in result.rows] == pytest.approx([s / 64 for s in LAG_STEPS])
    assert result.little_lag["step"] == 0 and result.little_lag["compute_basis"] == "flops"


def test_compute_fraction_falls_back_to_steps(tmp_path):
    lines = [{"candidate": i, "strategy": s, "seed": 0, "step": step, "eval_loss": float(i + step)}
             for i, s in enumerate("ABC") for step in (0, 5, 20)]
    (tmp_path / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = correlate(load_curves(tmp_path), n_boot=0)
    assert result.little_lag["compute_basis"] == "steps"
    assert [r.compute_fraction for r in result.rows] == pytest.approx([0, 0.25, 1])


# ---- the view from initialisation, and stability without finals ---------------------------------

def test_init_names_function_preserving_strategies(tmp_path):
    pool = write_pool(tmp_path, four([3, 3, 2, 4], [1, 3, 2, 4]), lag=10, final=100,
                      preserving={"A": True, "B": True})
    result = correlate(load_curves(pool), n_boot=0)
    assert result.init["function_preserving"] == ["A", "B"]
    assert result.init["step"] == 0 and result.init["leaders"] == ["C"]
    json.dumps(result.to_dict(), allow_nan=False)  # plain JSON, no numpy scalars or NaN


def test_ranking_stability_between_successive_steps(tmp_path):
    pool = write_pool(tmp_path, {(s, 0): v for s, v in
                                 {"A": [3, 1, 1], "B": [1, 3, 2], "C": [2, 2, 3], "D": [4, 4, 4]}.items()},
                      lag=100, final=1000)
    result = ranking_stability(load_curves(pool))
    assert result.last_step == 100 and result.rows[0]["spearman_vs_prev"] is None
    assert result.rows[1]["spearman_vs_prev"] == pytest.approx(stats.spearmanr([3, 1, 2, 4], [1, 3, 2, 4])[0])
    assert result.rows[2]["kendall_vs_prev"] == pytest.approx(stats.kendalltau([1, 3, 2, 4], [1, 2, 3, 4])[0])
    assert [r["leaders"] for r in result.rows] == [["B"], ["A"], ["A"]]
    assert [r["leader_changed"] for r in result.rows] == [None, True, False]
    assert result.rows[0]["spearman_vs_last"] == pytest.approx(0.4)
    assert "train-final" in result.notes[-1]


def test_a_shift_shared_by_all_candidates_of_a_seed_is_not_seed_noise(tmp_path):
    """Seed 1 adds the same 0.5 to every strategy: the ranking within each seed is identical, and
    the paired differences are the same on both seeds, so none of them is seed noise."""
    final = {"A": 1.0, "B": 1.1, "C": 1.2, "D": 1.3}
    records = []
    for i, (name, seed) in enumerate((n, s) for n in final for s in (0, 1)):
        for step, loss in ((0, 3.0), (10, final[name] + 0.5 * seed + 0.2), (20, final[name] + 0.5 * seed)):
            records.append({"candidate": i, "strategy": name, "seed": seed, "step": step, "eval_loss": loss,
                            "train_loss": None, "tokens": step, "flops": float(step), "diverged": False})
    (tmp_path / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = correlate(load_curves(tmp_path), n_boot=50)
    assert result.best_set["members"] == ["A"]  # unpaired, the shift would give an SE of 0.35
    assert all(c["seed_se"] == pytest.approx(0, abs=1e-12) for c in result.best_set["comparisons"][1:])
