"""Growth strategies, parametrized over the registry: a new strategy is covered without a new test.

Every strategy runs on every case it supports (a strategy that supports none fails a test):
output paths, shapes and dtypes are the target's, `from_params` gives the target config, the
input is untouched, the same key gives the same output, flagged strategies reproduce the small
model's logits to 1e-5 in float32, unflagged ones really change them. Source params are random
numpy arrays of the source's shapes, so no init is compiled for them; logits come from the
un-jitted `model.apply` (pure jnp), which costs a compile per new width only.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest

from laggrow import model
from laggrow.config import ModelConfig
from laggrow.errors import LaggrowError
from laggrow.growth import STRATEGIES, check_request, grow, is_function_preserving
from laggrow.growth.layout import flatten, unflatten

A = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=64, max_seq_len=16)
B = dataclasses.replace(A, n_layers=3, pos_emb="rope", tie_embeddings=True)
# llama: grouped-query attention (2 query heads per KV head), q/k/v biases, a RoPE base of its own
LA = dataclasses.replace(A, arch="llama", pos_emb="rope", n_kv_heads=2, qkv_bias=True, rope_theta=500.0,
                         ln_eps=1e-6)
LB = dataclasses.replace(LA, n_layers=3, tie_embeddings=True, qkv_bias=False)


def grown(cfg: ModelConfig, **sizes: int) -> ModelConfig:
    return dataclasses.replace(cfg, **sizes)


# (id, source, target): depth, width and both, multiples and not, learned/untied and rope/tied,
# gpt and llama.
CASES = [
    ("L2-3", A, grown(A, n_layers=3)),
    ("L3-5.rope.tied", B, grown(B, n_layers=5)),
    ("D32-64.F64-128", A, grown(A, d_model=64, n_heads=8, d_ff=128)),
    ("D32-96.F64-128.rope.tied", B, grown(B, d_model=96, n_heads=12, d_ff=128)),
    ("F64-96", A, grown(A, d_ff=96)),
    ("D32-64.L2-3", A, grown(A, d_model=64, n_heads=8, d_ff=128, n_layers=3)),
    ("D32-64.F64-96.L3-5.rope.tied", B, grown(B, d_model=64, n_heads=8, d_ff=96, n_layers=5)),
    # llama: depth (untied, biases), width in whole KV groups (tied), both; n_kv_heads grows with n_heads
    ("llama.L2-3", LA, grown(LA, n_layers=3)),
    ("llama.D32-64.F64-128.tied", LB, grown(LB, d_model=64, n_heads=8, n_kv_heads=4, d_ff=128)),
    ("llama.D32-64.F64-128.L2-3", LA, grown(LA, d_model=64, n_heads=8, n_kv_heads=4, d_ff=128, n_layers=3)),
    # 3 -> 4: what SOLAR's dus (2L - 2*drop) and block_expansion's every 3 reach, gpt and llama
    ("L3-4.rope.tied", B, grown(B, n_layers=4)),
    ("llama.L3-4.tied", LB, grown(LB, n_layers=4)),
]
CASE = {cid: (src, dst) for cid, src, dst in CASES}
COMPOSITES = ["hypercloning+copy_zero", "net2net+zero_top", "fusion+stack_middle", "net2net+interleave",
              "hypercloning+block_expansion"]
SPECS = list(STRATEGIES) + COMPOSITES
KEY = jax.random.key(7)


def options_for(spec: str, src: ModelConfig, dst: ModelConfig) -> dict:
    """The options the registry-wide tests grow `spec` with: none, except for slices, which has
    no default: the whole source, then its top L'-L layers again, not zeroed (so its "not
    preserving" claim is what the tests check; zeroed ranges have tests of their own)."""
    if spec.split("+")[-1] == "slices":
        n, k = src.n_layers, dst.n_layers - src.n_layers
        return {"ranges": [[0, n], [n - k, n]]}
    return {}


def supports(spec: str, src: ModelConfig, dst: ModelConfig) -> bool:
    try:
        check_request(src, dst, spec, options_for(spec, src, dst))
    except LaggrowError:
        return False
    return True


def grows_both(src: ModelConfig, dst: ModelConfig) -> bool:
    return src.n_layers != dst.n_layers and src.d_model != dst.d_model


def cases_for(spec: str) -> list[tuple[str, ModelConfig, ModelConfig]]:
    """The cases `spec` supports; a composition only where both depth and width grow (each init
    of a new config costs seconds of compilation, so no composition runs an identity stage)."""
    return [(cid, src, dst) for cid, src, dst in CASES
            if supports(spec, src, dst) and ("+" not in spec or grows_both(src, dst))]


RUNS = [pytest.param(spec, src, dst, id=f"{spec}-{cid}") for spec in SPECS for cid, src, dst in cases_for(spec)]


@functools.cache
def source_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random params with LayerNorm scales and biases away from 1 and 0, as after training."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, spec in flatten(model.param_shapes(cfg)).items():
        x = rng.standard_normal(spec.shape).astype(np.float32)
        out[path] = 1 + 0.1 * x if path.endswith("scale") else (0.1 if path.endswith("bias") else 0.2) * x
    return jax.tree.map(jax.numpy.asarray, unflatten(out))


TOKENS = np.random.default_rng(1).integers(0, A.vocab_size, (2, A.max_seq_len)).astype(np.int32)


def logits(params: dict, cfg: ModelConfig) -> np.ndarray:
    return np.asarray(model.apply(params, TOKENS, cfg))


@functools.cache
def grown_params(spec: str, src: ModelConfig, dst: ModelConfig, seed: int = 7) -> dict:
    return grow(source_params(src), src, dst, spec, jax.random.key(seed), **options_for(spec, src, dst))


def test_every_strategy_is_exercised():
    for name in STRATEGIES:
        assert cases_for(name), f"{name} supports none of the test cases"


@pytest.mark.parametrize("spec,src,dst", RUNS)
def test_output_is_the_targets_shape_and_deterministic(spec, src, dst):
    params = source_params(src)
    before = {p: np.array(x) for p, x in flatten(params).items()}
    out = grown_params(spec, src, dst)

    want = flatten(model.param_shapes(dst))
    got = flatten(out)
    assert set(got) == set(want)
    for path, leaf in got.items():
        assert isinstance(leaf, jax.Array), path
        assert (leaf.shape, leaf.dtype) == (want[path].shape, want[path].dtype), path
    untold = dict(max_seq_len=dst.max_seq_len, ln_eps=dst.ln_eps, rope_theta=dst.rope_theta)  # not in the shapes
    assert ModelConfig.from_params(out, **untold) == dst

    for path, x in flatten(params).items():  # the input is untouched
        np.testing.assert_array_equal(np.asarray(x), before[path], err_msg=path)
    again = grow(params, src, dst, spec, jax.random.key(7), **options_for(spec, src, dst))
    for path, leaf in flatten(again).items():  # same key, same output
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(got[path]), err_msg=path)


PRESERVING = [run for run in RUNS if is_function_preserving(run.values[0])]


@pytest.mark.parametrize("spec,src,dst", PRESERVING)
def test_function_preserving_strategies_reproduce_the_logits(spec, src, dst):
    before = logits(source_params(src), src)
    after = logits(grown_params(spec, src, dst), dst)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [s for s in SPECS if not is_function_preserving(s)])
def test_other_strategies_really_change_the_function(spec):
    changes = []
    for _, src, dst in cases_for(spec):
        before = logits(source_params(src), src)
        changes.append(float(np.abs(logits(grown_params(spec, src, dst), dst) - before).max()))
    assert max(changes) > 1e-3, changes  # far above the 1e-5 that preservation is held to


def test_hypercloning_noise_stays_exact_and_breaks_the_symmetry():
    src, dst = A, grown(A, d_model=64, n_heads=8, d_ff=128)
    plain = grown_params("hypercloning", src, dst)
    noisy = grow(source_params(src), src, dst, "hypercloning", KEY, noise=0.05)
    np.testing.assert_allclose(logits(noisy, dst), logits(source_params(src), src), rtol=1e-5, atol=1e-5)
    w_in = np.asarray(noisy["blocks"]["mlp"]["w_in"])
    assert not np.allclose(w_in[:, :32], w_in[:, 32:])  # the clones' fan-ins differ
    assert not np.allclose(w_in, np.asarray(plain["blocks"]["mlp"]["w_in"]))


def test_zero_pad_is_exact_when_d_model_is_kept():
    src, dst = A, grown(A, d_ff=96)
    out = grown_params("zero_pad", src, dst)
    np.testing.assert_allclose(logits(out, dst), logits(source_params(src), src), rtol=1e-5, atol=1e-5)
    w_in = np.asarray(out["blocks"]["mlp"]["w_in"])
    assert np.abs(w_in[..., 64:]).min() > 0 or np.abs(w_in[..., 64:]).std() > 0  # new fan-in is random
    assert not np.any(np.asarray(out["blocks"]["mlp"]["w_out"])[:, 64:])  # new fan-out is zero


def test_fusion_with_another_model_averages_and_is_not_preserving():
    src, dst = A, grown(A, d_model=64, n_heads=8, d_ff=128)
    partner = source_params(src, seed=1)
    out = grow(source_params(src), src, dst, "fusion", KEY, partner=partner)
    assert not is_function_preserving("fusion", partner=partner)
    assert is_function_preserving("fusion")
    w = np.asarray(out["blocks"]["mlp"]["w_in"])
    np.testing.assert_array_equal(w[:, :32, :64], np.asarray(source_params(src)["blocks"]["mlp"]["w_in"]))
    np.testing.assert_array_equal(w[:, 32:, 64:], np.asarray(partner["blocks"]["mlp"]["w_in"]))
    assert not np.any(w[:, :32, 64:]) and not np.any(w[:, 32:, :64])  # block-diagonal
    np.testing.assert_allclose(np.asarray(out["head"]["w"]),
                               np.concatenate([source_params(src)["head"]["w"], partner["head"]["w"]]) / 2,
                               rtol=1e-6)


def test_strategies_with_randomness_depend_on_the_key():
    for spec, src, dst in [("stack_noise", A, grown(A, n_layers=3)), ("scratch", A, grown(A, n_layers=3)),
                           ("random_pad", A, grown(A, d_ff=96)), ("net2net", A, grown(A, d_ff=96))]:
        one, two = grown_params(spec, src, dst, 7), grown_params(spec, src, dst, 8)
        assert any(not np.array_equal(np.asarray(x), np.asarray(flatten(two)[p]))
                   for p, x in flatten(one).items()), spec


@pytest.mark.parametrize("cid,ranges", [
    ("L3-5.rope.tied", [[0, 1], [0, 1, "zero"], [1, 3], [2, 3, "zero"]]),
    ("llama.L3-4.tied", [[0, 2], [0, 1, "zero"], [2, 3]]),
])
def test_slices_of_the_whole_source_and_zeroed_ranges_keep_the_logits(cid, ranges):
    """[0, L) in order once, every other range zeroed: exact, wherever the zeroed ranges sit;
    the same ranges with one zero mark left out are not (the registry claims "no" in general)."""
    src, dst = CASE[cid]
    before = logits(source_params(src), src)
    after = logits(grow(source_params(src), src, dst, "slices", KEY, ranges=ranges), dst)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    unzeroed = [r[:2] for r in ranges[:2]] + ranges[2:]
    changed = logits(grow(source_params(src), src, dst, "slices", KEY, ranges=unzeroed), dst)
    assert np.abs(changed - before).max() > 1e-3


@pytest.mark.parametrize("cid", ["L2-3", "llama.L3-4.tied"])
def test_block_expansion_is_the_slices_of_its_groups(cid):
    """LLaMA Pro written as mergekit would: each group of `every` layers, then its last layer
    zeroed; the two strategies must give the same params."""
    src, dst = CASE[cid]
    n = src.n_layers  # these cases add one layer: a single group of all n layers
    ranges = [[0, n], [n - 1, n, "zero"]]
    by_slices = flatten(grow(source_params(src), src, dst, "slices", KEY, ranges=ranges))
    for path, x in flatten(grown_params("block_expansion", src, dst)).items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(by_slices[path]), err_msg=path)
