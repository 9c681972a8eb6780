"""Adaptive gradual stacking, piece by piece: the stage schedule, the candidates (checked on the
parameters they produce), the optimizer state through a growth, LAG's choice in a probe (on the
selection windows only, its ties recorded), and every method's equal-FLOPs budget by arithmetic."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from laggrow import growth, model, train
from laggrow.config import ModelConfig, TrainConfig
from laggrow.errors import LaggrowError
from laggrow.stack import growth_choice as sp
from laggrow.stack import plan as sc

# ---- PROP-alpha ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "n", "alpha", "lengths"), [
    (60, 3, 1.0, [10, 20, 30]),  # 60 * (1, 2, 3) / 6
    (60, 3, 2.0, [4, 17, 39]),  # 60 * (1, 4, 9) / 14 = 4.29, 17.14, 38.57, rounded on the running sum
    # running sums 600 * (1, 3, 6, 10, 15) / 21 = 28.6, 85.7, 171.4, 285.7, 428.6 -> 29, 86, 171, 286, 429
    (600, 6, 1.0, [29, 57, 85, 115, 143, 171]),
    (10, 2, 0.5, [4, 6]),  # 10 * (1, 1.414) / 2.414 = 4.14, 5.86
])
def test_stage_lengths_follow_prop_alpha_and_sum_to_the_budget(total, n, alpha, lengths):
    ends = sc.stage_ends(total, n, alpha)
    got = [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    assert got == lengths and sum(got) == total


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("total", [7, 100, 999])
def test_every_stage_is_within_one_step_of_its_share(alpha, total):
    n = 5
    ends = sc.stage_ends(total, n, alpha)
    lengths = np.diff([0, *ends])
    shares = total * np.arange(1, n + 1) ** alpha / np.sum(np.arange(1, n + 1) ** alpha)
    assert lengths.sum() == total and np.all(np.abs(lengths - shares) < 1)


# ---- candidates, by the layers they copy -----------------------------------------------------------

CFG = ModelConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64, vocab_size=256, max_seq_len=16)


def test_the_candidates_are_every_block_duplicated_after_itself_then_new_blocks_on_top():
    names = [(c.name, c.kind, c.layers) for c in sc.candidates_at(3, 1, ("blocks", "top", "zero", "random"))]
    assert names == [("block0", "copy", (0, 0, 1, 2)), ("block1", "copy", (0, 1, 1, 2)),
                     ("block2", "copy", (0, 1, 2, 2)),  # the top block copied on top: gradual stacking's
                     ("zero", "zero", (0, 1, 2, None)), ("random", "random", (0, 1, 2, None))]
    two = [(c.name, c.layers) for c in sc.candidates_at(4, 2, ("blocks",))]
    assert two == [("block0", (0, 1, 0, 1, 2, 3)), ("block1", (0, 1, 2, 3, 2, 3))]
    assert [c.name for c in sc.candidates_at(4, 2, ("top", "zero"))] == ["block1", "zero"]


@pytest.mark.parametrize(("n", "block", "top", "middle"), [
    (1, 1, 0, 0), (2, 1, 1, 0), (3, 1, 2, 1), (4, 1, 3, 1), (5, 1, 4, 2), (4, 2, 1, 0), (6, 2, 2, 1)])
def test_top_and_middle_are_the_blocks_gradual_stacking_and_midas_copy(n, block, top, middle):
    assert sc.fixed_candidate("top", n, block).name == f"block{top}"
    assert sc.fixed_candidate("middle", n, block).name == f"block{middle}"
    # and they are the registered strategies' plans for one stage of growth
    for method, strategy in (("top", "stack_top"), ("middle", "stack_middle")):
        plan = growth.get_strategy(strategy).plan(n, n + block, {"block": block})
        assert tuple(s.source for s in plan) == sc.fixed_candidate(method, n, block).layers


@pytest.fixture(scope="module")
def small_state():
    """A real 3-layer train state after a few AdamW steps, so that its moments are not zero."""
    tcfg = TrainConfig(steps=50, batch_size=4, warmup_steps=0)
    state = train.init_state(model.init_params(CFG, jax.random.key(0)), train.make_optimizer(tcfg))
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 17)), jnp.int32)
    step = jax.jit(train.make_train_step(CFG, tcfg))
    for _ in range(3):
        state, _ = step(state, batch)
    return state, tcfg


def _adam(opt_state):
    return next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState))


def _schedule_count(opt_state) -> int:
    states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
              if isinstance(s, optax.ScaleByScheduleState)]
    return int(states[0].count)


@pytest.mark.parametrize("candidate", sc.candidates_at(3, 1, ("blocks", "zero", "random")), ids=lambda c: c.name)
def test_each_candidate_grows_the_params_and_moments_as_its_plan_says(small_state, candidate):
    state, tcfg = small_state
    dst = dataclasses.replace(CFG, n_layers=4)
    grown = sp.grow_state(state, candidate, CFG, dst, tcfg, jax.random.key(1), "carry")
    old_mu, new_mu = _adam(state["opt_state"]).mu, _adam(grown["opt_state"]).mu
    for path in ("attn/w_qkv", "attn/w_out", "mlp/w_in", "mlp/w_out", "ln1/scale"):
        part, name = path.split("/")
        old = np.asarray(state["params"]["blocks"][part][name])
        new = np.asarray(grown["params"]["blocks"][part][name])
        assert new.shape[0] == 4
        for j, source in enumerate(candidate.layers):
            if source is not None:  # a copy: the source layer's weights and moments, exactly
                np.testing.assert_array_equal(new[j], old[source])
                np.testing.assert_array_equal(np.asarray(new_mu["blocks"][part][name])[j],
                                              np.asarray(old_mu["blocks"][part][name])[source])
            else:  # a new layer: no moments; zero's output projections are zero, random's are not
                assert not np.asarray(new_mu["blocks"][part][name])[j].any()
                if name == "w_out":
                    assert (not new[j].any()) == (candidate.kind == "zero")
                if name == "w_qkv":
                    assert not any(np.array_equal(new[j], old[i]) for i in range(3))
    np.testing.assert_array_equal(np.asarray(grown["params"]["embed"]["tokens"]),
                                  np.asarray(state["params"]["embed"]["tokens"]))
    assert int(grown["step"]) == int(state["step"]) == 3
    assert _schedule_count(grown["opt_state"]) == 3 and int(_adam(grown["opt_state"]).count) == 3


def test_the_zero_candidate_keeps_the_function_and_a_copy_does_not(small_state):
    state, tcfg = small_state
    dst = dataclasses.replace(CFG, n_layers=4)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 16)), jnp.int32)
    before = model.apply(state["params"], tokens, CFG)
    zero, block = sc.candidates_at(3, 1, ("zero",))[0], sc.candidates_at(3, 1, ("blocks",))[1]
    same = model.apply(sp.grow_state(state, zero, CFG, dst, tcfg, jax.random.key(1), "carry")["params"], tokens, dst)
    other = model.apply(sp.grow_state(state, block, CFG, dst, tcfg, jax.random.key(1), "carry")["params"], tokens, dst)
    np.testing.assert_allclose(np.asarray(same), np.asarray(before), atol=1e-5)
    assert np.abs(np.asarray(other) - np.asarray(before)).max() > 1e-3


def test_reset_restarts_the_moments_but_keeps_the_global_schedule(small_state):
    state, tcfg = small_state
    dst = dataclasses.replace(CFG, n_layers=4)
    grown = sp.grow_state(state, sc.candidates_at(3, 1, ("blocks",))[0], CFG, dst, tcfg, jax.random.key(1), "reset")
    adam = _adam(grown["opt_state"])
    assert int(adam.count) == 0 and not any(np.asarray(x).any() for x in jax.tree.leaves(adam.mu))
    assert _schedule_count(grown["opt_state"]) == 3  # one schedule over the whole budget: no warmup restart
    shapes = jax.tree.map(lambda x: x.shape, model.param_shapes(dst))
    assert jax.tree.map(lambda x: x.shape, adam.nu) == shapes


def test_a_plan_that_does_not_fit_the_target_is_one_line(small_state):
    state, _ = small_state
    dst = dataclasses.replace(CFG, n_layers=4)
    with pytest.raises(LaggrowError, match="one slot per target layer"):
        short = sp.slots_of(sc.candidates_at(3, 1, ("zero",))[0])[:3]
        growth.transform.grow_with_plan(state["params"], CFG, dst, short, jax.random.key(0))
    bad = sc.Candidate("bad", "copy", (0, 1, 2, 7))
    with pytest.raises(LaggrowError, match="source layer 7 does not exist"):
        growth.transform.grow_with_plan(state["params"], CFG, dst, sp.slots_of(bad), jax.random.key(0))


# ---- the probe's choice -----------------------------------------------------------------------------


def _grown(state, tcfg, names):
    dst = dataclasses.replace(CFG, n_layers=4)
    by_name = {c.name: c for c in sc.candidates_at(3, 1, ("blocks", "zero"))}
    return dst, [sp.grow_state(state, by_name[n], CFG, dst, tcfg, jax.random.key(1), "carry") for n in names]


def _windows(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 17)).astype(np.int32)


BATCHES = {i: np.random.default_rng(100 + i).integers(0, 256, (4, 17)).astype(np.int32) for i in range(3, 9)}


def _last(steps, losses, horizon):
    return float(losses[-1])


def test_the_probe_keeps_the_argmin_and_a_diverged_candidate_never_wins(small_state):
    state, tcfg = small_state
    # three candidates in every probe here: the pool's step and evaluation compile once for them all
    dst, states = _grown(state, tcfg, ["block0", "block1", "zero"])
    # candidate 1 is broken: a NaN weight makes its loss NaN from the first step
    broken = states[1]["params"]["blocks"]["mlp"]["w_in"]
    states[1] = {**states[1], "params": {**states[1]["params"], "blocks": {
        **states[1]["params"]["blocks"], "mlp": {**states[1]["params"]["blocks"]["mlp"],
                                                "w_in": broken.at[0, 0, 0].set(jnp.nan)}}}}
    selection = _windows(2)
    result = sp.probe(states, dst, tcfg, BATCHES.__getitem__, selection, [0, 3, 6], _last, horizon=20)
    assert sorted(result.curves) == [0, 3, 6]
    assert all(c.shape == (3, 8) for c in result.curves.values())  # every candidate, every selection window
    assert list(result.diverged) == [False, True, False]
    assert np.isnan(result.scores[1]) and np.isnan(result.curves[6][1]).all()
    finite = [0, 2]
    assert result.winner == min(finite, key=lambda i: result.losses(6)[i])
    np.testing.assert_array_equal(result.scores[finite], result.losses(6)[finite])
    assert int(result.state["step"]) == 3 + 6 and "diverged_at" not in result.state
    # the winner's state is that candidate's, trained: its windows match the probe's evaluation
    windows = train.evaluate_windows(result.state["params"], dst, selection)
    np.testing.assert_allclose(windows, result.curves[6][result.winner], rtol=1e-5)
    assert 1 not in result.tied and result.winner not in result.tied


def test_the_probe_reads_only_the_selection_windows_it_is_given(small_state):
    """The probe is given the selection set alone: its choice, scores and curves are functions of
    those windows and the training batches, so a probe beside different test windows is the same
    probe (the run-level check, with a whole run's test set replaced, is in test_stack_run)."""
    state, tcfg = small_state
    dst, states = _grown(state, tcfg, ["block0", "block2", "zero"])
    one = sp.probe(states, dst, tcfg, BATCHES.__getitem__, _windows(2), [0, 6], _last, horizon=20)
    again = sp.probe(states, dst, tcfg, BATCHES.__getitem__, _windows(2), [0, 6], _last, horizon=20)
    other = sp.probe(states, dst, tcfg, BATCHES.__getitem__, _windows(3), [0, 6], _last, horizon=20)
    assert one.winner == again.winner
    np.testing.assert_array_equal(one.curves[6], again.curves[6])
    assert not np.array_equal(one.curves[6], other.curves[6])  # the selection windows are what it reads


def test_candidates_tied_with_the_winner_are_recorded_and_the_first_wins(small_state):
    state, tcfg = small_state
    # block1 three times: identical candidates train identically, so their scores are exactly equal
    dst, states = _grown(state, tcfg, ["block1", "block1", "block1"])
    result = sp.probe(states, dst, tcfg, BATCHES.__getitem__, _windows(2), [0, 6], _last, horizon=20)
    assert result.scores[0] == result.scores[1] == result.scores[2]
    assert result.winner == 0 and result.tied == [1, 2]  # the first in the candidates' order; the others tied
    cands = [sc.Candidate(name, "copy", (0, 1, 1, 2)) for name in ("block1", "again", "once more")]
    record = sp.choice_record(2, 3, 3, 4, cands, result.winner, "block2", "block1", "loss", result, 6)
    assert record["probed"] and record["chosen"] == "block1" and record["tied"] == ["again", "once more"]
    row = record["candidates"][0]
    assert row["selection_probe_loss"] == pytest.approx(result.losses(6)[0])
    assert row["selection_probe_loss_se"] == pytest.approx(result.curves[6][0].std(ddof=1) / np.sqrt(8))
    assert row["selection_loss_at_growth"] == pytest.approx(result.losses(0)[0])


def test_ties_are_within_float_rounding_or_the_paired_window_noise():
    windows = np.array([[1.0, 2.0, 3.0, 4.0], [1.1, 2.1, 3.1, 4.1], [1.3, 1.9, 3.5, 4.1]])
    scores = windows.mean(axis=1)  # 2.5, 2.6, 2.7
    # 1 - 0: the same +0.1 on every window, paired SE 0: not tied. 2 - 0: +0.3, -0.1, +0.5, +0.1, mean 0.2,
    # paired SE sd([.3, -.1, .5, .1]) / 2 = 0.2582 / 2 = 0.129: within 2 SEs (0.258)
    assert sp.tied_with(0, scores, windows) == [2]
    assert sp.tied_with(0, np.array([2.5, 2.5 * (1 + 5e-7), np.nan]), windows[:, :1]) == [1]  # float rounding


# ---- config checks (what needs no training) ------------------------------------------------------------


def _raw(**stack):
    return {"model": {"n_layers": 3, "d_model": 32, "n_heads": 4, "d_ff": 64},
            "data": {"corpus": "kjv", "seq_len": 16},
            "train": {"steps": 60, "batch_size": 4, "warmup_steps": 5},
            "stack": {"start_layers": 1, "block": 1, "probe_steps": 4, "candidates": ["blocks", "zero"], **stack}}


def test_the_compute_of_each_method_adds_up_by_hand():
    plan = sc.plan_from_dict(_raw())
    # a training step of depth L: 6 FLOPs per weight of L * (4 d^2 + 2 d f) + d v, and 6 * L * 2 * seq * d of
    # attention, per token; 4 x 16 tokens a step (d 32, f 64, v 256, seq 16)
    per_layer, head, attention = 4 * 32 * 32 + 2 * 32 * 64, 32 * 256, 2 * 16 * 32
    step = {d: 64 * (6 * (d * per_layer + head) + 6 * d * attention) for d in (1, 2, 3)}
    assert [s.steps for s in plan.stages] == [10, 20, 30]
    train_flops = 10 * step[1] + 20 * step[2] + 30 * step[3]
    # probes: growth 1->2 has 2 candidates (block0, zero), 2->3 has 3; K = 4 steps of the others, and two
    # selection-set evaluations per candidate (right after growth, and at K): 4 x 16 windows (the data
    # defaults) x 16 tokens, forward = a third of a training token's FLOPs
    evals = {d: 4 * 16 * 16 * (6 * (d * per_layer + head) + 6 * d * attention) // 3 for d in (2, 3)}
    probe_flops = 1 * 4 * step[2] + 2 * 4 * step[3]
    eval_flops = 2 * 2 * evals[2] + 3 * 2 * evals[3]
    adaptive = plan.compute("adaptive")
    assert adaptive["train_flops"] == train_flops and adaptive["probe_flops"] == probe_flops
    assert adaptive["eval_flops"] == eval_flops
    assert adaptive["total_flops"] == train_flops + probe_flops + eval_flops
    assert adaptive["probe_tokens"] == (1 + 2) * 4 * 64 and adaptive["train_tokens"] == 60 * 64
    budget = adaptive["total_flops"]
    assert plan.budget_flops() == budget
    # top and middle: T' = 131, stages 131 * (1, 3, 6) / 6 = 21.8, 65.5, 131 rounded on the running sum:
    # 22, 44, 65 steps, and T' = 132 (22, 44, 66) would cost one more 3-layer step than the budget allows
    assert plan.stacked_steps() == 131
    assert [s.steps for s in plan.stages_for("top")] == [22, 44, 65]
    top_flops = 22 * step[1] + 44 * step[2] + 65 * step[3]
    assert top_flops <= budget < top_flops + step[3] and 22 * step[1] + 44 * step[2] + 66 * step[3] > budget
    assert plan.compute("top") == plan.compute("middle") == {
        "train_flops": top_flops, "probe_flops": 0, "eval_flops": 0, "total_flops": top_flops,
        "train_tokens": 131 * 64, "probe_tokens": 0, "total_tokens": 131 * 64}
    scratch = plan.compute("scratch")
    assert scratch["total_flops"] <= budget < scratch["total_flops"] + step[3]
    assert plan.scratch_steps() == budget // step[3]
    assert plan.budgets() == {m: {"steps": s, "flops": plan.compute(m)["total_flops"]}
                              for m, s in (("adaptive", 60), ("top", 131), ("middle", 131),
                                           ("scratch", budget // step[3]))}


@pytest.mark.parametrize("overrides", [
    {},
    {"alpha": 2.0, "probe_steps": 2},
    {"candidates": ["blocks", "zero", "random"], "probe_eval_every": 2},
    {"start_layers": 2, "block": 2, "candidates": ["blocks", "zero"], "n_layers": 6, "steps": 90},
    {"optimizer_state": "reset", "steps": 301, "alpha": 0.5},
])
def test_every_method_is_trained_to_adaptives_flops_within_one_target_step(overrides):
    overrides = dict(overrides)
    raw = _raw(**{k: v for k, v in overrides.items() if k not in ("n_layers", "steps")})
    raw["model"]["n_layers"] = overrides.get("n_layers", 3)
    raw["train"]["steps"] = overrides.get("steps", 60)
    plan = sc.plan_from_dict(raw)
    budget, target_step = plan.compute("adaptive")["total_flops"], plan.step_flops(raw["model"]["n_layers"])
    assert plan.budget_flops() == budget and plan.method_steps("adaptive") == raw["train"]["steps"]
    for method in ("top", "middle", "scratch"):
        total = plan.compute(method)["total_flops"]
        assert total <= budget < total + target_step, method  # never above, less than a target step below
    # T' is the largest budget whose schedule fits: one step more would not
    t = plan.stacked_steps()
    assert t >= raw["train"]["steps"] and plan.schedule_flops(t + 1) > budget
    stages = plan.stages_for("top")
    assert stages[-1].end == t and all(s.steps >= 1 for s in stages)
    assert [s.depth for s in stages] == [s.depth for s in plan.stages]
    assert plan.run_for("top", 1).train.steps == t and plan.run_for("top", 1).train.seed == 1
    assert plan.train_for("scratch").steps == plan.scratch_steps()


def test_without_adaptive_every_stacking_method_keeps_t_and_scratch_its_flops():
    plan = sc.plan_from_dict(_raw(methods=["top", "middle", "scratch"]))
    train_flops = plan.schedule_flops(60)
    assert plan.budget_flops() == train_flops
    assert plan.method_steps("top") == plan.method_steps("middle") == 60
    assert plan.stages_for("top") == plan.stages and plan.train_for("top") == plan.run.train
    scratch = plan.compute("scratch")["total_flops"]
    assert scratch <= train_flops < scratch + plan.step_flops(3)


@pytest.mark.parametrize(("override", "message"), [
    ({"start_layers": 2, "block": 2},
     "model.n_layers: expected stack.start_layers (2) plus a positive multiple of stack.block (2)"),
    ({"block": 2}, "stack.start_layers: expected a positive multiple of stack.block (2)"),
    ({"start_layers": 3}, "model.n_layers: expected stack.start_layers (3)"),
    ({"alpha": 0}, "stack.alpha: expected a number > 0"),
    ({"alpha": -1.5}, "stack.alpha: expected a number > 0"),
    ({"probe_steps": 21},
     "stack.probe_steps: expected at most the shortest stage that starts with a probe (stage 2: 20"),
    ({"probe_steps": 0}, "stack.probe_steps: expected an integer >= 1"),
    ({"candidates": ["blocks", "middle"]},
     "stack.candidates: expected names from blocks, top, zero, random, got 'middle'"),
    ({"candidates": ["top"]}, "stack.candidates: expected at least two distinct candidates"),
    ({"candidates": []}, "stack.candidates: expected a non-empty list"),
    ({"methods": ["adaptive", "bottom"]}, "stack.methods: expected names from adaptive, top, middle, scratch"),
    ({"methods": ["top", "top"]}, "stack.methods: expected each name once"),
    ({"optimizer_state": "keep"}, "stack.optimizer_state: expected 'carry' or 'reset'"),
    ({"predictor": "oracle"}, "stack.predictor"),
    ({"seeds": [0, 0]}, "stack.seeds: expected a list of distinct integers"),
    ({"probe_eval_every": 5}, "stack.probe_eval_every: expected an integer in [0, probe_steps=4]"),
    ({"colour": 1}, "stack.colour: unknown key"),
])
def test_bad_stack_keys_are_one_line_naming_the_key(override, message):
    with pytest.raises(LaggrowError) as err:
        sc.plan_from_dict(_raw(**override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_budget_too_small_for_a_step_per_stage_is_refused():
    raw = _raw(probe_steps=1)
    raw["train"].update(steps=2, warmup_steps=0)
    expected = "train.steps: expected a budget that gives each of the 3 stages at least one step"
    with pytest.raises(LaggrowError, match=expected):
        sc.plan_from_dict(raw)
