"""Where copies go, and what happens to the optimizer state.

Layer plans are checked against hand-written expectations (the *right* layers in the right
slots), and every depth strategy's output is checked slot by slot against its own plan. The
optimizer-state carry is checked on a real optax AdamW state for every strategy in the registry.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from laggrow.growth import STRATEGIES, grow, grow_opt_state
from laggrow.growth.layout import OUTPUT_PROJECTIONS, flatten, unflatten
from test_growth import CASE, CASES, KEY, grown_params, options_for, source_params, supports

PLAN_STRATEGIES = [name for name, s in STRATEGIES.items() if s.plan is not None]

# (strategy, L, L', options) -> source layer per target slot (None: a new layer).
EXPECTED = [
    ("stack", 2, 3, {}, [0, 1, 0]),
    ("stack", 3, 8, {}, [0, 1, 2, 0, 1, 2, 0, 1]),
    ("stack_top", 3, 5, {}, [0, 1, 2, 1, 2]),
    ("stack_top", 2, 7, {}, [0, 1, 0, 1, 0, 1, 1]),  # stages of 2: copies of copies, then 1
    ("stack_middle", 3, 5, {}, [0, 1, 0, 1, 2]),  # blocks [0 1] [2]: block ceil(2/2) = the first
    ("stack_middle", 6, 8, {}, [0, 1, 2, 3, 2, 3, 4, 5]),
    ("stack_middle", 4, 5, {}, [0, 1, 1, 2, 3]),
    ("stack_middle", 6, 10, {"block": 2}, [0, 1, 2, 3, 2, 3, 2, 3, 4, 5]),
    ("stack_bottom", 3, 5, {}, [0, 1, 0, 1, 2]),
    ("interleave", 2, 4, {}, [0, 0, 1, 1]),
    ("interleave", 3, 5, {}, [0, 0, 1, 1, 2]),
    ("copy_zero", 3, 4, {}, [0, 1, 1, 2]),
    ("random_top", 2, 4, {}, [0, 1, None, None]),
    ("zero_top", 2, 3, {}, [0, 1, None]),
    ("stack_noise", 2, 3, {}, [0, 1, 0]),
    ("dus", 3, 4, {}, [0, 1, 1, 2]),  # drop 1 (what 4 layers need): [0, 2) + [1, 3)
    ("dus", 2, 4, {"drop": 0}, [0, 1, 0, 1]),
    ("dus", 32, 48, {"drop": 8}, list(range(24)) + list(range(8, 32))),  # SOLAR 10.7B: 2 x 24 of 32 layers
    ("block_expansion", 4, 6, {}, [0, 1, 1, 2, 3, 3]),  # every 2: a copy of each pair's top layer after it
    ("block_expansion", 3, 6, {"every": 1}, [0, 0, 1, 1, 2, 2]),
    ("block_expansion", 8, 10, {"every": 4}, [0, 1, 2, 3, 3, 4, 5, 6, 7, 7]),  # LLaMA Pro's P = 2 groups
]


@pytest.mark.parametrize("name,n,n_target,options,expected", EXPECTED)
def test_plans_put_the_right_layers_in_the_right_slots(name, n, n_target, options, expected):
    slots = STRATEGIES[name].plan(n, n_target, options)
    assert [s.source for s in slots] == expected
    assert sum(s.copy for s in slots) == n_target - n  # the source layers all stay, in order
    kept = [s.source for s in slots if not s.copy]
    assert kept == list(range(n))


def test_slices_concatenate_their_ranges_in_order():
    plan = STRATEGIES["slices"].plan(4, 7, {"ranges": [[0, 3], [1, 4, "zero"], [3, 4]]})
    assert [s.source for s in plan] == [0, 1, 2, 1, 2, 3, 3]
    assert [s.zero_out for s in plan] == [False, False, False, True, True, True, False]
    assert [s.copy for s in plan] == [False, False, False, True, True, False, True]  # repeats of a source layer
    # a passthrough may drop and reorder layers: nothing says every source layer stays
    assert [s.source for s in STRATEGIES["slices"].plan(4, 5, {"ranges": [[2, 4], [0, 3]]})] == [2, 3, 0, 1, 2]


def test_flagged_plans_mark_the_right_slots():
    copy_zero = STRATEGIES["copy_zero"].plan(3, 4, {})
    assert [s.zero_out for s in copy_zero] == [False, False, True, False]  # the copy, after its original
    # LLaMA Pro spreads its copies, one after each group; copy_zero puts them in one middle block
    expansion = STRATEGIES["block_expansion"].plan(4, 6, {})
    assert [s.zero_out for s in expansion] == [False, False, True, False, False, True]
    assert [s.source for s in STRATEGIES["copy_zero"].plan(4, 6, {})] == [0, 1, 0, 1, 2, 3]
    assert not any(s.zero_out for s in STRATEGIES["dus"].plan(3, 4, {}))
    assert all(s.zero_out for s in STRATEGIES["zero_top"].plan(2, 4, {})[2:])
    assert [s.noise for s in STRATEGIES["stack_noise"].plan(2, 3, {})] == [False, False, True]


DEPTH_CASES = [c for c in CASES if c[1].d_model == c[2].d_model and c[1].d_ff == c[2].d_ff]


PLAN_RUNS = [pytest.param(name, cid, src, dst, id=f"{name}-{cid}")
             for name in PLAN_STRATEGIES for cid, src, dst in DEPTH_CASES if supports(name, src, dst)]


@pytest.mark.parametrize("name,cid,src,dst", PLAN_RUNS)
def test_grown_layers_follow_the_plan(name, cid, src, dst):
    slots = STRATEGIES[name].plan(src.n_layers, dst.n_layers, {"noise": 0.01, **options_for(name, src, dst)})
    before = flatten(source_params(src)["blocks"])
    after = flatten(grown_params(name, src, dst)["blocks"])
    for j, slot in enumerate(slots):
        for path, x in after.items():
            got = np.asarray(x[j])
            if slot.zero_out and f"blocks/{path}" in OUTPUT_PROJECTIONS:
                assert not np.any(got), (j, path)
            elif slot.source is not None:
                want = np.asarray(before[path][slot.source])
                if slot.noise and np.any(want):
                    assert not np.array_equal(got, want) and np.allclose(got, want, rtol=0.2, atol=0.1), (j, path)
                else:
                    np.testing.assert_array_equal(got, want, err_msg=f"slot {j} {path}")


# ---------------------------------------------------------------------------------------------
# Optimizer state


def adamw_state(params: dict, seed: int):
    """A real optax AdamW state whose mu and nu are random (distinguishable) trees."""
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.95))
    state = opt.init(params)
    treedef = jax.tree.structure(params)
    rng = np.random.default_rng(seed)

    def randomise(node):
        if isinstance(node, dict) and jax.tree.structure(node) == treedef:
            return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), node)
        return node

    is_params = lambda n: isinstance(n, dict) and jax.tree.structure(n) == treedef  # noqa: E731
    return opt, jax.tree.map(randomise, state, is_leaf=is_params)


def moments_of(state, params: dict) -> list[dict]:
    treedef = jax.tree.structure(params)
    is_params = lambda n: isinstance(n, dict) and jax.tree.structure(n) == treedef  # noqa: E731
    return [n for n in jax.tree.leaves(state, is_leaf=is_params) if is_params(n)]


CARRY_CASES = [CASES[0], CASES[2], ("L3-4.rope.tied", *CASE["L3-4.rope.tied"])]  # depth, width; dus


def carry_case(name: str):
    for _, src, dst in CARRY_CASES:
        if supports(name, src, dst):
            return src, dst
    raise AssertionError(f"{name} supports no carry case")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_carried_moments_have_the_targets_shapes_and_the_sources_values(name):
    src, dst = carry_case(name)
    check_carried_moments(name, src, dst, options_for(name, src, dst))


@pytest.mark.parametrize("cid,ranges", [("L3-5.rope.tied", [[0, 3], [1, 3, "zero"]]),
                                        ("llama.L3-4.tied", [[0, 1, "zero"], [0, 3]])])
def test_zeroed_ranges_carry_zero_moments_for_their_output_projections(cid, ranges):
    """A zeroed range's layers take their source's moments except in the output projections:
    those weights are new (zero), and the source's mu would move them along the old weight's
    history at the first step, before their own gradient does."""
    check_carried_moments("slices", *CASE[cid], {"ranges": ranges})


def check_carried_moments(name: str, src, dst, options: dict) -> None:
    params = source_params(src)
    big = grow(params, src, dst, name, KEY, **options)
    opt, state = adamw_state(params, seed=3)
    carried = grow_opt_state(state, src, dst, name, KEY, **options)

    fresh = opt.init(big)
    assert jax.tree.structure(carried) == jax.tree.structure(fresh)
    for a, b in zip(jax.tree.leaves(carried), jax.tree.leaves(fresh), strict=True):
        assert (np.shape(a), np.asarray(a).dtype) == (np.shape(b), np.asarray(b).dtype)
    assert int(carried[1][0].count) == int(state[1][0].count)  # non-moment leaves kept

    strategy = STRATEGIES[name]
    for old, new in zip(moments_of(state, params), moments_of(carried, big), strict=True):
        old, new = flatten(old), flatten(new)
        if name == "scratch":  # nothing is copied: a reset
            assert not any(np.any(np.asarray(x)) for x in new.values())
        elif strategy.plan is not None:
            slots = strategy.plan(src.n_layers, dst.n_layers, options)
            for path, x in new.items():
                if not path.startswith("blocks/"):
                    np.testing.assert_array_equal(np.asarray(x), np.asarray(old[path]))
                    continue
                for j, slot in enumerate(slots):
                    zeroed = slot.source is None or (slot.zero_out and path in OUTPUT_PROJECTIONS)
                    want = 0 * np.asarray(old[path][0]) if zeroed else np.asarray(old[path][slot.source])
                    np.testing.assert_array_equal(np.asarray(x[j]), want, err_msg=f"{path} slot {j}")
        else:  # width: every strategy keeps the source units first, with their moments undivided
            for path, x in new.items():
                corner = tuple(slice(0, n) for n in np.shape(old[path]))
                np.testing.assert_array_equal(np.asarray(x)[corner], np.asarray(old[path]), err_msg=path)


def test_hypercloning_moments_are_tiled_and_padding_moments_are_zero():
    src, dst = CASES[2][1], CASES[2][2]
    params = source_params(src)
    _, state = adamw_state(params, seed=4)
    mu = flatten(moments_of(state, params)[0])
    big = grown_params("hypercloning", src, dst)
    cloned = flatten(moments_of(grow_opt_state(state, src, dst, "hypercloning", KEY), big)[0])
    w_in = np.asarray(cloned["blocks/mlp/w_in"])  # (L, 2D, 2F): four undivided copies
    for i in range(2):
        for j in range(2):
            np.testing.assert_array_equal(w_in[:, i * 32:(i + 1) * 32, j * 64:(j + 1) * 64], mu["blocks/mlp/w_in"])
    padded = flatten(moments_of(grow_opt_state(state, src, dst, "zero_pad", KEY), big)[0])
    for path, x in padded.items():
        rest = np.asarray(x).copy()
        rest[tuple(slice(0, n) for n in mu[path].shape)] = 0
        assert not np.any(rest), path


def test_fusion_carries_no_moments_for_another_partner():
    src, dst = CASES[2][1], CASES[2][2]
    params = source_params(src)
    _, state = adamw_state(params, seed=5)
    partner = source_params(src, seed=2)
    big = grown_params("fusion", src, dst)
    mu = flatten(moments_of(grow_opt_state(state, src, dst, "fusion", KEY, partner=partner), big)[0])
    assert not np.any(np.asarray(mu["blocks/mlp/w_in"])[:, 32:, 64:])
    self_mu = flatten(moments_of(grow_opt_state(state, src, dst, "fusion", KEY), big)[0])
    src_mu = flatten(moments_of(state, params)[0])
    np.testing.assert_array_equal(np.asarray(self_mu["blocks/mlp/w_in"])[:, 32:, 64:], src_mu["blocks/mlp/w_in"])


def test_carry_leaves_non_moment_state_alone():
    src, dst = CASES[0][1], CASES[0][2]
    state = {"step": np.int32(5), "mu": unflatten(flatten(source_params(src))), "other": (1.0, None)}
    out = grow_opt_state(state, src, dst, "stack", KEY)
    assert out["step"] == 5 and out["other"] == (1.0, None)
    assert out["mu"]["blocks"]["mlp"]["w_in"].shape[0] == dst.n_layers
