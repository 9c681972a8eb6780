"""Optimizer moments follow the parameters' map, through every strategy and composition.

The expected moments are never computed by `grow_opt_state`. They come from `grow` itself, in
params mode, used as an oracle for *where* each grown unit comes from: with noise off, a copying
growth is linear in the source on its copied units, G(P) = S * T(P) + N, where T gathers source
elements, S is the fan-in split (1, 1/2, ...) and N the new units (a seeded fresh init, zeros).
Growing the zero tree, a tree of ones and a tree of distinct integer ids with the same key gives
    (G(ids) - G(0)) / (G(1) - G(0)) = the id of the source element each grown element copies,
and G(1) - G(0) == 0 exactly where a grown element depends on no source element (a fresh layer,
padding, a zeroed projection, another fusion partner's units). The documented rule
(docs/strategies.md, `grow_opt_state`'s docstring) is then: a copied element takes its source's
mu and nu *undivided* (no fan-in split, no noise), a new one is zero. The moments are grown with
noise on, so noise leaking into them would fail the test too.

Hand-written expectations (np.tile, plan lists) pin the map itself on small cases, and net2net's
random unit map is identified by value: the moments must copy the very units the params copied.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import optax
import pytest

from laggrow.config import TrainConfig
from laggrow.growth import STRATEGIES, grow, grow_opt_state
from laggrow.growth.layout import flatten, unflatten
from laggrow.train import make_optimizer
from test_growth import CASE, CASES, KEY, options_for, source_params
from test_growth import supports as supported

WIDTHS = [n for n, s in STRATEGIES.items() if s.kind == "width"]
DEPTHS = [n for n, s in STRATEGIES.items() if s.kind == "depth"]


def takes(spec: str, option: str) -> bool:
    return any(option in STRATEGIES[part].options for part in spec.split("+"))


# Every single strategy on every case it supports; every WIDTH+DEPTH composition the registry
# allows on the one case where all width strategies (fusion: exactly 2x) apply, and the
# compositions of net2net on the tied RoPE case with a non-multiple d_ff (random extra units and
# the tied ln_f division). Both use only configs test_growth.py already initialises.
SINGLE_RUNS = [(name, cid) for name in STRATEGIES for cid, src, dst in CASES if supported(name, src, dst)]
# dus makes 2L - 2*drop layers: neither composition case (2 -> 3, 3 -> 5) is one it can make.
COMPOSED_DEPTHS = [d for d in DEPTHS if d != "dus"]
COMPOSITE_RUNS = [(f"{w}+{d}", "D32-64.L2-3") for w, d in itertools.product(WIDTHS, COMPOSED_DEPTHS)]
COMPOSITE_RUNS += [(f"net2net+{d}", "D32-64.F64-96.L3-5.rope.tied") for d in COMPOSED_DEPTHS if d != "block_expansion"]


def test_every_strategy_and_composition_is_covered():
    """A new strategy joins the parametrization by itself; this fails if it supports no case
    (alone, or composed on the composition cases)."""
    assert {name for name, _ in SINGLE_RUNS} == set(STRATEGIES)
    for spec, cid in COMPOSITE_RUNS:
        assert supported(spec, *CASE[cid]), (spec, cid)


def id_tree(cfg, start: int = 1) -> dict:
    """Every element of every leaf a distinct integer >= start (exact in float32 up to 2**24)."""
    out, next_id = {}, start
    for path, spec in flatten(source_params(cfg)).items():
        n = int(np.prod(spec.shape))
        out[path] = np.arange(next_id, next_id + n, dtype=np.float32).reshape(spec.shape)
        next_id += n
    assert next_id < 2**24
    return out


def source_map(spec: str, src, dst, options: dict) -> dict[str, np.ndarray]:
    """For every grown element, the id of the source element it copies (0: depends on none),
    read off `grow` in params mode as the module docstring explains."""
    ids = id_tree(src)
    zeros = {p: np.zeros_like(x) for p, x in ids.items()}
    ones = {p: np.ones_like(x) for p, x in ids.items()}
    g = {name: flatten(grow(unflatten(tree), src, dst, spec, KEY, **options))
         for name, tree in (("zeros", zeros), ("ones", ones), ("ids", ids))}
    out = {}
    for path, base in g["zeros"].items():
        scale = np.asarray(g["ones"][path]) - np.asarray(base)
        moved = np.asarray(g["ids"][path]) - np.asarray(base)
        copied = scale != 0
        assert not np.any(moved[~copied]), f"{path}: an element ignoring ones depends on the ids"
        ratio = np.where(copied, moved / np.where(copied, scale, 1), 0)
        ident = np.rint(ratio)
        np.testing.assert_allclose(ratio, ident, atol=1e-2, err_msg=f"{path}: not a scaled copy")
        # S is 1/k: a copy's fan-in divided by its number of copies (and the tied ln_f by the factor)
        inverse = np.where(copied, 1 / np.where(copied, scale, 1), 1)
        np.testing.assert_allclose(inverse, np.rint(inverse), rtol=1e-5, err_msg=f"{path}: odd split")
        out[path] = ident.astype(np.int64)
    return out


def adam_state_with(src, mu: dict, nu: dict):
    """laggrow's real optimizer state (clip + AdamW) for `src`, with the given moments."""
    params = source_params(src)
    state = make_optimizer(TrainConfig()).init(params)
    adam = state[1][0]
    assert isinstance(adam, optax.ScaleByAdamState)
    adam = adam._replace(count=np.int32(37), mu=unflatten(dict(mu)), nu=unflatten(dict(nu)))
    return (state[0], (adam, *state[1][1:]))


def carried_adam(spec: str, src, dst, mu: dict, nu: dict, **options) -> optax.ScaleByAdamState:
    carried = grow_opt_state(adam_state_with(src, mu, nu), src, dst, spec, KEY, **options)
    adam = carried[1][0]
    assert int(adam.count) == 37, "the bias-correction count is carried as it is"
    return adam


def expected_moment(src_map: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[id] where an element copies source element id, 0 where it copies none."""
    return np.where(src_map > 0, table[src_map], 0).astype(np.float32)


@pytest.mark.parametrize("spec,cid", SINGLE_RUNS + COMPOSITE_RUNS,
                         ids=[f"{s}-{c}" for s, c in SINGLE_RUNS + COMPOSITE_RUNS])
def test_moments_follow_the_parameters_map(spec, cid):
    check_moments_follow_the_parameters(spec, *CASE[cid], options_for(spec, *CASE[cid]))


@pytest.mark.parametrize("cid,ranges", [("L3-5.rope.tied", [[0, 3], [2, 3, "zero"], [1, 2]]),
                                        ("llama.L3-4.tied", [[0, 2], [1, 2, "zero"], [2, 3]])])
def test_moments_of_zeroed_ranges_follow_the_parameters_map(cid, ranges):
    """A zeroed range copies its layers' moments, but not in its zeroed output projections."""
    check_moments_follow_the_parameters("slices", *CASE[cid], {"ranges": ranges})


def check_moments_follow_the_parameters(spec: str, src, dst, options: dict) -> None:
    # The oracle needs a noise-free growth; the moments get noise on, which they must ignore.
    params_options = {**options, **({"noise": 0.0} if takes(spec, "noise") else {})}
    moment_options = {**options, **({"noise": 0.05} if takes(spec, "noise") else {})}
    src_map = source_map(spec, src, dst, params_options)

    ids = id_tree(src)
    mu = {p: x for p, x in ids.items()}
    nu = {p: 3 * x + 0.5 for p, x in ids.items()}  # different from mu, positive like a real nu
    n_ids = max(int(x.max()) for x in ids.values()) + 1
    mu_table, nu_table = np.zeros(n_ids, np.float32), np.zeros(n_ids, np.float32)
    for path in ids:
        mu_table[ids[path].ravel().astype(np.int64)] = mu[path].ravel()
        nu_table[ids[path].ravel().astype(np.int64)] = nu[path].ravel()

    adam = carried_adam(spec, src, dst, mu, nu, **moment_options)
    got_mu, got_nu = flatten(adam.mu), flatten(adam.nu)
    assert set(got_mu) == set(src_map) == set(got_nu)
    for path, where in src_map.items():
        np.testing.assert_array_equal(np.asarray(got_mu[path]), expected_moment(where, mu_table), err_msg=f"mu {path}")
        np.testing.assert_array_equal(np.asarray(got_nu[path]), expected_moment(where, nu_table), err_msg=f"nu {path}")
    if spec.split("+")[-1] != "scratch":  # scratch copies nothing; every other growth copies
        assert any(np.any(m > 0) for m in src_map.values())


def test_moments_follow_another_fusion_partner_as_new_units():
    """With another partner, its half of every block-diagonal weight is not the source's: zero."""
    src, dst = CASE["D32-64.F64-128"]
    partner = {"partner": source_params(src, seed=2)}
    src_map = source_map("fusion", src, dst, partner)
    ids = id_tree(src)
    adam = carried_adam("fusion", src, dst, ids, ids, **partner)
    w_in = src_map["blocks/mlp/w_in"]
    assert not np.any(w_in[:, 32:, 64:]) and np.all(w_in[:, :32, :64] > 0)
    table = np.zeros(max(int(x.max()) for x in ids.values()) + 1, np.float32)
    for x in ids.values():
        table[x.ravel().astype(np.int64)] = x.ravel()
    for path, where in src_map.items():
        np.testing.assert_array_equal(np.asarray(flatten(adam.mu)[path]), expected_moment(where, table), err_msg=path)


# ---------------------------------------------------------------------------------------------
# The rule by hand: tiled and gathered, never divided


def moments_like(cfg, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    mu = {p: rng.standard_normal(s.shape).astype(np.float32) for p, s in flatten(source_params(cfg)).items()}
    nu = {p: rng.random(s.shape).astype(np.float32) + 0.1 for p, s in flatten(source_params(cfg)).items()}
    return mu, nu


def test_hypercloning_moments_are_tiled_undivided_where_params_are_divided():
    """D 32 -> 96 (factor 3), d_ff 64 -> 128 (factor 2), tied: the params' fan-ins are divided by
    the number of copies and the tied ln_f by 3; mu and nu are plain tiles (nu not by 3**2)."""
    src, dst = CASE["D32-96.F64-128.rope.tied"]
    mu, nu = moments_like(src, seed=11)
    adam = carried_adam("hypercloning", src, dst, mu, nu)
    params = flatten(source_params(src))
    grown = flatten(grow(source_params(src), src, dst, "hypercloning", KEY))
    reps = {  # copies per axis: (L, D<, 3, H, Dh) etc., D x3, H x3, F x2
        "blocks/attn/w_qkv": (1, 3, 1, 3, 1), "blocks/attn/w_out": (1, 3, 1, 3),
        "blocks/mlp/w_in": (1, 3, 2), "blocks/mlp/w_out": (1, 2, 3), "embed/tokens": (1, 3),
        "ln_f/scale": (3,), "blocks/ln1/scale": (1, 3),
    }
    split = {"blocks/attn/w_qkv": 3, "blocks/attn/w_out": 3, "blocks/mlp/w_in": 3, "blocks/mlp/w_out": 2,
             "embed/tokens": 1, "ln_f/scale": 3, "blocks/ln1/scale": 1}
    for path, r in reps.items():
        np.testing.assert_allclose(np.asarray(grown[path]), np.tile(np.asarray(params[path]), r) / split[path],
                                   rtol=1e-6, err_msg=f"params {path}")
        np.testing.assert_array_equal(np.asarray(flatten(adam.mu)[path]), np.tile(mu[path], r), err_msg=f"mu {path}")
        np.testing.assert_array_equal(np.asarray(flatten(adam.nu)[path]), np.tile(nu[path], r), err_msg=f"nu {path}")


@pytest.mark.parametrize("spec,plan", [
    ("hypercloning+stack_middle", [0, 0, 1]),  # MIDAS 2 -> 3: block 0 duplicated after itself
    ("hypercloning+copy_zero", [0, 0, 1]),  # the same slots, the copy's output projections zero
    ("hypercloning+zero_top", [0, 1, None]),  # a new (zero) layer on top
    ("hypercloning+interleave", [0, 0, 1]),
    ("hypercloning+stack", [0, 1, 0]),
])
def test_composite_moments_by_hand(spec, plan):
    """D 32 -> 64, d_ff 64 -> 128, 2 -> 3 layers: every layer of mu is a 2x2 tile of its
    plan's source layer (zero for new layers and zeroed projections of copies)."""
    src, dst = CASE["D32-64.L2-3"]
    mu, nu = moments_like(src, seed=12)
    adam = carried_adam(spec, src, dst, mu, nu)
    zeroed_copy = spec.endswith("copy_zero")
    for path, r in (("blocks/mlp/w_in", (2, 2)), ("blocks/attn/w_out", (2, 1, 2)), ("blocks/ln2/bias", (2,))):
        got = np.asarray(flatten(adam.nu if path.endswith("bias") else adam.mu)[path])
        table = nu if path.endswith("bias") else mu
        for j, source in enumerate(plan):
            if source is None or (zeroed_copy and j == 1 and path == "blocks/attn/w_out"):
                want = np.zeros_like(got[j])
            else:
                want = np.tile(table[path][source], r)
            np.testing.assert_array_equal(got[j], want, err_msg=f"{spec} {path} layer {j}")
    np.testing.assert_array_equal(np.asarray(flatten(adam.mu)["head/w"]), np.tile(mu["head/w"], (2, 1)))


# ---------------------------------------------------------------------------------------------
# net2net's random unit map: the moments copy the units the params copied


def match_units(grown: np.ndarray, source: np.ndarray, exact: bool) -> list[int]:
    """For each grown unit (last axis), the one source unit (last axis) it equals."""
    out = []
    for j in range(grown.shape[-1]):
        diff = np.abs(source - grown[..., j:j + 1]).reshape(-1, source.shape[-1]).max(axis=0)
        hits = np.flatnonzero(diff == 0 if exact else diff < 1e-6)
        assert len(hits) == 1, f"grown unit {j} matches source units {hits.tolist()}"
        out.append(int(hits[0]))
    return out


def net2net_maps(src, dst, params: dict, grown: dict, mu: dict, grown_mu: dict, d_split: int):
    """(params' map, moments' map) for d_ff, read from mlp/w_in (L, D<, F) and mlp/w_out
    (L, F<, D), and for heads, read from attn/w_qkv (L, D<, 3, H, Dh) and attn/w_out (L, H<, Dh, D)."""
    d = src.d_model
    heads = lambda x, h_axis: np.moveaxis(np.asarray(x), h_axis, -1)  # noqa: E731
    maps = {}
    # params: the first D-copy of the fan-in, times the D split, equals the source unit
    maps["F", "params"] = match_units(np.asarray(grown["blocks/mlp/w_in"])[:, :d] * d_split,
                                      np.asarray(params["blocks/mlp/w_in"]), exact=False)
    maps["H", "params"] = match_units(heads(np.asarray(grown["blocks/attn/w_qkv"])[:, :d] * d_split, 3),
                                      heads(params["blocks/attn/w_qkv"], 3), exact=False)
    # moments: undivided, on both sides of the unit (its fan-in and its fan-out)
    maps["F", "mu"] = match_units(np.asarray(grown_mu["blocks/mlp/w_in"])[:, :d], mu["blocks/mlp/w_in"], exact=True)
    maps["F", "mu out"] = match_units(np.moveaxis(np.asarray(grown_mu["blocks/mlp/w_out"])[..., :d], 1, -1),
                                      np.moveaxis(mu["blocks/mlp/w_out"], 1, -1), exact=True)
    maps["H", "mu"] = match_units(heads(np.asarray(grown_mu["blocks/attn/w_qkv"])[:, :d], 3),
                                  heads(mu["blocks/attn/w_qkv"], 3), exact=True)
    maps["H", "mu out"] = match_units(heads(np.asarray(grown_mu["blocks/attn/w_out"])[..., :d], 1),
                                      heads(mu["blocks/attn/w_out"], 1), exact=True)
    return maps


@pytest.mark.parametrize("cid", ["F64-96", "D32-64.F64-128"])
def test_net2net_moments_copy_the_units_the_params_copied(cid):
    src, dst = CASE[cid]
    params = {p: np.asarray(x) for p, x in flatten(source_params(src)).items()}
    mu = {p: x + 1.0 for p, x in params.items()}  # distinct per unit, as the params are
    adam = carried_adam("net2net", src, dst, mu, {p: x * x for p, x in mu.items()})
    grown = flatten(grow(source_params(src), src, dst, "net2net", KEY))
    d_split = dst.d_model // src.d_model
    maps = net2net_maps(src, dst, params, grown, mu, flatten(adam.mu), d_split)
    for dim, n_old, n_new in (("F", src.d_ff, dst.d_ff), ("H", src.n_heads, dst.n_heads)):
        units = maps[dim, "params"]
        assert units[:n_old] == list(range(n_old)), "the source units stay in place"
        assert maps[dim, "mu"] == units and maps[dim, "mu out"] == units, dim
        if n_new > n_old:  # the extra units are random picks, not a tiling
            assert units[n_old:] != [j % n_old for j in range(n_old, n_new)], dim
    # nu follows the same map
    got_nu = np.asarray(flatten(adam.nu)["blocks/mlp/w_in"])[:, :src.d_model]
    np.testing.assert_array_equal(got_nu, np.square(mu["blocks/mlp/w_in"])[..., maps["F", "params"]])


def test_net2net_unit_map_depends_on_the_key_in_params_and_moments_alike():
    """Another key picks other extra units, and the moments move with the params: a moment map
    derived from anything but the key given would miss one of the two keys."""
    src, dst = CASE["D32-64.F64-128"]
    params = {p: np.asarray(x) for p, x in flatten(source_params(src)).items()}
    mu = {p: x + 1.0 for p, x in params.items()}
    seen = []
    for seed in (7, 8):
        key = jax.random.key(seed)
        grown = flatten(grow(source_params(src), src, dst, "net2net", key))
        carried = grow_opt_state(adam_state_with(src, mu, mu), src, dst, "net2net", key)
        maps = net2net_maps(src, dst, params, grown, mu, flatten(carried[1][0].mu), 2)
        assert maps["F", "mu"] == maps["F", "params"] and maps["H", "mu"] == maps["H", "params"]
        seen.append((maps["F", "params"], maps["H", "params"]))
    assert seen[0][0] != seen[1][0], "two keys, the same random d_ff map"


def test_net2net_composite_moments_follow_units_and_layers():
    """net2net+stack, 2 -> 3 layers: layer 2 copies layer 0 (StackBERT), with the same random
    d_ff units as the params; the moments copy them undivided."""
    src, dst = CASE["D32-64.L2-3"]
    params = {p: np.asarray(x) for p, x in flatten(source_params(src)).items()}
    mu = {p: x + 1.0 for p, x in params.items()}
    adam = carried_adam("net2net+stack", src, dst, mu, mu)
    grown = flatten(grow(source_params(src), src, dst, "net2net+stack", KEY))
    w_in, mu_in = np.asarray(grown["blocks/mlp/w_in"]), np.asarray(flatten(adam.mu)["blocks/mlp/w_in"])
    for j, source in enumerate([0, 1, 0]):
        units = match_units(w_in[j:j + 1, :32] * 2, params["blocks/mlp/w_in"][source:source + 1], exact=False)
        assert match_units(mu_in[j:j + 1, :32], mu["blocks/mlp/w_in"][source:source + 1], exact=True) == units
        np.testing.assert_array_equal(mu_in[j, 32:], mu["blocks/mlp/w_in"][source][:, units])  # D tiled

