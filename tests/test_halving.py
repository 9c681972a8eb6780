"""analysis/halving.py on synthetic curves whose rounds, survivors and charged steps are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from laggrow.analysis.halving import curve_from_matrix, halving_budgets, successive_halving
from laggrow.errors import LaggrowError


def offset_oracle(offsets: dict[str, float], final_step: int, every: int = 1):
    """Loss 2 + offset + 1 / (t + 1) at every `every` steps: a shared decay, candidates never cross."""
    steps = np.arange(0, final_step + 1, every)

    def curve(name: str, budget: int):
        seen = steps[steps <= budget]
        return seen, 2.0 + offsets[name] + 1.0 / (seen + 1.0)

    return curve


def names(rounds, key):
    return [r[key] for r in rounds]


# final ranking c7 < c3 < c1 < c5 < c6 < c2 < c4 < c0, deliberately not the list order
EIGHT = {"c0": 0.7, "c1": 0.2, "c2": 0.5, "c3": 0.1, "c4": 0.6, "c5": 0.3, "c6": 0.4, "c7": 0.0}


def test_eight_candidates_eta_two():
    assert halving_budgets(8, 2, 4, 64) == [(4, 8), (8, 4), (16, 2)]
    result = successive_halving(list(EIGHT), offset_oracle(EIGHT, 64), eta=2, first=4, final_step=64)
    rounds = result.to_dict()["rounds"]
    assert names(rounds, "steps") == [4, 8, 16]
    assert names(rounds, "survivors") == [list(EIGHT), ["c1", "c3", "c5", "c7"], ["c3", "c7"]]
    assert names(rounds, "kept") == [["c7", "c3", "c1", "c5"], ["c7", "c3"], ["c7"]]
    assert names(rounds, "dropped") == [["c6", "c2", "c4", "c0"], ["c1", "c5"], ["c3"]]
    # at step 4 the loss is 2 + offset + 1/5
    assert rounds[0]["scores"] == pytest.approx({c: 2.2 + o for c, o in EIGHT.items()})
    assert result.winner == "c7"
    assert result.charged == {"c0": 4, "c1": 8, "c2": 4, "c3": 16, "c4": 4, "c5": 8, "c6": 4, "c7": 16}
    assert result.total_steps == 4 * 4 + 2 * 8 + 2 * 16  # 64, against 8 * 64 = 512 to train them all
    assert result.unranked == []


def test_nine_candidates_eta_three():
    offsets = {f"s{i}": o for i, o in enumerate([0.5, 0.8, 0.1, 0.3, 0.7, 0.0, 0.6, 0.2, 0.4])}
    assert halving_budgets(9, 3, 2, 100) == [(2, 9), (6, 3)]
    result = successive_halving(list(offsets), offset_oracle(offsets, 100), eta=3, first=2, final_step=100)
    rounds = result.to_dict()["rounds"]
    assert names(rounds, "steps") == [2, 6]
    assert names(rounds, "kept") == [["s5", "s2", "s7"], ["s5"]]
    assert names(rounds, "dropped") == [["s3", "s8", "s0", "s6", "s4", "s1"], ["s2", "s7"]]
    assert rounds[1]["survivors"] == ["s2", "s5", "s7"]
    assert result.winner == "s5"
    assert result.charged == {"s0": 2, "s1": 2, "s2": 6, "s3": 2, "s4": 2, "s5": 6, "s6": 2, "s7": 6, "s8": 2}
    assert result.total_steps == 6 * 2 + 2 * 6 + 6  # 30


def test_a_budget_capped_at_the_final_step_picks_the_best_of_the_last_round():
    assert halving_budgets(8, 2, 4, 8) == [(4, 8), (8, 4)]
    result = successive_halving(list(EIGHT), offset_oracle(EIGHT, 8), eta=2, first=4, final_step=8)
    assert [r.kept for r in result.rounds] == [["c7", "c3", "c1", "c5"], ["c7"]]
    assert result.rounds[1].dropped == ["c3", "c1", "c5"]
    assert result.total_steps == 4 * 4 + 4 * 8  # 48
    assert halving_budgets(8, 2, 64, 64) == [(64, 8)]  # first == final_step: one round over everyone
    # the fourth budget is the cap at final_step = 30, not 5 * 2**3 = 40
    assert halving_budgets(16, 2, 5, 30) == [(5, 16), (10, 8), (20, 4), (30, 2)]


# straight lines, evaluated at every step: loss = start + rate * t
LINES = {"a": (3.00, -0.01), "b": (3.05, -0.02), "c": (3.10, -0.005), "e": (3.50, -0.05)}
# final (t = 16): a 2.84, b 2.73, c 3.02, e 2.70, so e is the best to end with


def line_oracle(budget_steps: int = 16):
    def curve(name: str, budget: int):
        start, rate = LINES[name]
        t = np.arange(0, min(budget, budget_steps) + 1)
        return t, start + rate * t
    return curve


def test_the_scheduler_follows_the_predictor_round_by_round():
    # by loss: at 4, a 2.96 < b 2.97 < c 3.08 < e 3.30, so the late bloomer e goes first;
    # at 8, b 2.89 < a 2.92: the leader of round 0 loses round 1
    by_loss = successive_halving(list(LINES), line_oracle(), eta=2, first=4, final_step=16)
    assert [(r.kept, r.dropped) for r in by_loss.rounds] == [(["a", "b"], ["c", "e"]), (["b"], ["a"])]
    assert by_loss.rounds[0].scores == pytest.approx({"a": 2.96, "b": 2.97, "c": 3.08, "e": 3.30})
    assert by_loss.winner == "b"
    # by slope over steps 2..4: e -0.05 < b -0.02 < a -0.01 < c -0.005, and e keeps the lead at 8
    by_slope = successive_halving(list(LINES), line_oracle(), eta=2, first=4, final_step=16, predictor="slope")
    assert [(r.kept, r.dropped) for r in by_slope.rounds] == [(["e", "b"], ["a", "c"]), (["e"], ["b"])]
    assert by_slope.rounds[1].scores == pytest.approx({"b": -0.02, "e": -0.05})
    assert by_slope.winner == "e"
    assert by_slope.to_dict()["predictor"] == "slope"


def test_ties_are_broken_by_candidate_order():
    flat = dict.fromkeys(["z", "y", "x", "w"], 0.0)
    result = successive_halving(list(flat), offset_oracle(flat, 16), eta=2, first=2, final_step=16)
    assert [r.kept for r in result.rounds] == [["z", "y"], ["z"]]
    assert result.winner == "z"
    # a tie for the last place kept: q and r tie, q comes first in the list
    tied = {"p": 0.0, "q": 0.1, "r": 0.1, "s": 0.2}
    result = successive_halving(list(tied), offset_oracle(tied, 16), eta=2, first=2, final_step=16)
    assert result.rounds[0].kept == ["p", "q"]


def test_a_candidate_without_a_loss_at_the_budget_is_ranked_last():
    nan = math.nan
    steps = np.array([0, 2, 4, 8])
    matrix = np.array([[3.0, 2.0, nan, nan],    # best so far, but diverged at step 4
                       [3.0, 2.5, 2.4, 2.3],
                       [3.0, 2.6, 2.5, 2.2],
                       [3.0, 2.7, 2.6, 2.5]])
    curve = curve_from_matrix(["dead", "b", "c", "d"], steps, matrix)
    np.testing.assert_array_equal(curve("b", 5)[0], [0, 2, 4])
    np.testing.assert_array_equal(curve("dead", 8)[1], [3.0, 2.0])
    result = successive_halving(["dead", "b", "c", "d"], curve, eta=2, first=4, final_step=8)
    assert result.rounds[0].scores["dead"] == math.inf
    assert result.rounds[0].kept == ["b", "c"]
    assert result.rounds[0].dropped == ["d", "dead"]
    assert result.winner == "c"  # 2.2 < 2.3 at step 8
    assert result.unranked == ["dead"]
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # infinity is not JSON
    assert record["rounds"][0]["scores"]["dead"] is None


def test_a_budget_nobody_was_evaluated_at_is_refused():
    offsets = {"a": 0.0, "b": 0.1, "c": 0.2, "d": 0.3}  # rounds at 4 and 8; evaluations at 0, 5
    with pytest.raises(LaggrowError, match=r"halving: no survivor has a finite loss at step 4 .*: 4, 8\)$"):
        successive_halving(list(offsets), offset_oracle(offsets, 8, every=5), eta=2, first=4, final_step=8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"eta": 1}, "halving.eta: expected an integer >= 2, got 1"),
    ({"eta": 2.0}, "halving.eta: expected an integer >= 2, got 2.0"),
    ({"eta": True}, "halving.eta: expected an integer >= 2, got True"),
    ({"first": 300}, "halving.first: expected an integer in [1, final_steps=256], got 300"),
    ({"first": 0}, "halving.first: expected an integer in [1, final_steps=256], got 0"),
    ({"final_step": 0, "first": 1}, "halving.final_step: expected an integer >= 1, got 0"),
    ({"candidates": ["only"]}, "halving.candidates: expected at least 2 candidates, got 1"),
    ({"candidates": ["a", "a"]}, "halving.candidates: expected distinct candidate names, got ['a', 'a']"),
    ({"predictor": "oracle"}, "predictor 'oracle': unknown (expected one of: loss, window, slope, extrapolate)"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
    args = {"candidates": ["a", "b"], "eta": 2, "first": 4, "final_step": 256, **kwargs}
    offsets = {"a": 0.0, "b": 0.1, "only": 0.0}
    with pytest.raises(LaggrowError) as e:
        successive_halving(args.pop("candidates"), offset_oracle(offsets, 256), **args)
    assert str(e.value) == message


def test_budgets_are_validated_too():
    with pytest.raises(LaggrowError, match=r"^halving\.eta: expected an integer >= 2, got 1$"):
        halving_budgets(8, 1, 4, 64)
    with pytest.raises(LaggrowError, match=r"^halving\.candidates: expected at least 2 candidates, got 1$"):
        halving_budgets(1, 2, 4, 64)
