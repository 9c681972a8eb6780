"""Bad growth requests end in one readable line; the registry's metadata and docs stay in step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from laggrow import model
from laggrow.config import ModelConfig
from laggrow.errors import LaggrowError
from laggrow.growth import (
    STRATEGIES,
    get_strategy,
    grow,
    strategies_markdown,
    strategies_table,
    with_strategies_table,
)
from laggrow.growth.layout import AXES, check_shapes, flatten, unflatten
from laggrow.growth.registry import fresh_init_key
from test_growth import KEY, LA, LB, A, B, source_params

WIDE = dataclasses.replace(A, d_model=64, n_heads=8, d_ff=128)
DEEP = dataclasses.replace(A, n_layers=4)


def fails(*args, **options) -> str:
    with pytest.raises(LaggrowError) as info:
        grow(*args, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dst,strategy,needle", [
    (DEEP, "stack_midle", "did you mean 'stack_middle'"),
    (DEEP, "hyperclone+stack", "did you mean 'hypercloning'"),
    (DEEP, "zzzz", "laggrow strategies"),
    (dataclasses.replace(A, n_layers=1), "stack", "model.n_layers: the target (1) is smaller than the source (2)"),
    (dataclasses.replace(A, d_ff=32), "net2net", "model.d_ff: the target (32) is smaller"),
    (dataclasses.replace(A, d_model=48, n_heads=6), "hypercloning",
     "cannot grow d_model 32 -> 48; possible d_model: 32 (unchanged), 64, 96, 128, ..."),
    (dataclasses.replace(A, d_ff=96), "hypercloning", "cannot grow d_ff 64 -> 96; possible d_ff: 64"),
    (dataclasses.replace(A, d_model=96, n_heads=12, d_ff=192), "fusion", "possible d_model: 64"),
    (dataclasses.replace(A, d_model=64, n_heads=4), "hypercloning", "keeps head_dim 8"),
    (WIDE, "stack_middle", "compose a width strategy first, e.g. 'hypercloning+stack_middle'"),
    (dataclasses.replace(WIDE, n_layers=3), "hypercloning", "compose a depth strategy after it"),
    (dataclasses.replace(WIDE, n_layers=3), "stack+hypercloning", "one width strategy then one depth"),
    (dataclasses.replace(A, vocab_size=128), "stack", "model.vocab_size: growth keeps it"),
    (dataclasses.replace(A, max_seq_len=32), "stack", "learned position table"),
    (dataclasses.replace(A, tie_embeddings=True), "stack", "model.tie_embeddings"),
])
def test_bad_targets_and_names(dst, strategy, needle):
    assert needle in fails(source_params(A), A, dst, strategy, KEY)


@pytest.mark.parametrize("dst,strategy,needle", [
    (dataclasses.replace(LA, d_model=64, n_heads=8), "hypercloning",
     "model.n_kv_heads: width growth keeps 2 query heads per key/value head (heads grow in whole groups), "
     "so n_heads 8 needs n_kv_heads 4, got 2"),
    (dataclasses.replace(LA, d_model=64, n_heads=8, n_kv_heads=8), "net2net", "needs n_kv_heads 4, got 8"),
    (dataclasses.replace(LA, d_model=40, n_heads=5), "zero_pad", "model.n_heads: width growth keeps 2 query "
     "heads per key/value head (heads grow in whole groups), so expected a multiple of 2, got 5"),
    (dataclasses.replace(LA, n_layers=3, arch="gpt", n_kv_heads=0, qkv_bias=False), "stack",
     "model.arch: growth keeps it; expected 'llama' (the source's), got 'gpt'"),
    (dataclasses.replace(LA, n_layers=3, qkv_bias=False), "stack", "model.qkv_bias: growth keeps it"),
    (dataclasses.replace(LA, n_layers=3, rope_theta=10000.0), "stack", "model.rope_theta: growth keeps it"),
])
def test_bad_llama_targets(dst, strategy, needle):
    assert needle in fails(source_params(LA), LA, dst, strategy, KEY)


SIX = dataclasses.replace(A, n_layers=6)  # shapes only: these requests fail before any array is grown
FOUR_LLAMA = dataclasses.replace(LA, n_layers=4)


@pytest.mark.parametrize("src,dst,strategy,options,needle", [
    (A, DEEP, "slices", {}, "option ranges: strategy slices needs it (expected a list of [start, stop] or "
     "[start, stop, zero] source layer ranges, e.g. [[0, 4], [2, 4, zero]])"),
    (A, DEEP, "slices", {"ranges": [[0, 2], [0, 3]]}, "option ranges: entry 1 [0, 3] reaches past the source's "
     "2 layers (expected stop <= 2)"),
    (A, DEEP, "slices", {"ranges": [[0, 2], [1, 1], [0, 2]]}, "option ranges: entry 1 [1, 1] is empty"),
    (A, DEEP, "slices", {"ranges": [[0, 2], [-1, 1]]}, "entry 1 [-1, 1] is empty or negative"),
    (A, DEEP, "slices", {"ranges": [[0, 2], [0, 1]]}, "option ranges: the ranges hold 3 layers, but the "
     "target's n_layers is 4 (expected ranges totalling 4)"),
    (A, DEEP, "slices", {"ranges": [[0, 2], [0, 2, True]]}, "option ranges: entry 1 is [0, 2, True]; expected "
     "[start, stop] or [start, stop, zero]"),
    (A, DEEP, "slices", {"ranges": [{"range": [0, 2]}, [0, 2]]}, "option ranges: entry 0 is {'range': [0, 2]}"),
    (A, DEEP, "slices", {"ranges": "[[0, 2], [0, 2]]"}, "option ranges: expected a list of"),
    (A, DEEP, "slices", {"ranges": []}, "option ranges: expected a list of"),
    (A, DEEP, "slices", {"ranges": [[0, 2.0], [0, 2]]}, "with integer start and stop"),
    (LA, FOUR_LLAMA, "dus", {"drop": -1}, "option drop: expected an integer >= 0, got -1"),
    (LA, FOUR_LLAMA, "dus", {"drop": 2}, "option drop: 2 leaves no layer of the source's 2 (expected drop < 2)"),
    (DEEP, SIX, "dus", {"drop": 0}, "option drop: 0 gives 2*4 - 2*0 = 8 layers, but the target's n_layers is 6 "
     "(expected drop 1)"),
    (DEEP, dataclasses.replace(A, n_layers=7), "dus", {}, "strategy dus: makes 2L - 2*drop layers, so from 4 "
     "layers possible n_layers: 8 (drop 0), 6 (drop 1); got 7"),
    (DEEP, dataclasses.replace(A, n_layers=7), "block_expansion", {}, "strategy block_expansion: adds one identity "
     "layer per group of `every` layers (every divides L), so from 4 layers possible n_layers: 5 (every 4), "
     "6 (every 2), 8 (every 1); got 7"),
    (DEEP, SIX, "block_expansion", {"every": 3}, "option every: 3 does not divide the source's 4 layers "
     "(LLaMA Pro's groups are equal; expected one of 1, 2, 4)"),
    (DEEP, SIX, "block_expansion", {"every": 0}, "option every: expected an integer >= 1, got 0"),
    (DEEP, SIX, "block_expansion", {"every": 4}, "option every: 4 gives 4 + 4/4 = 5 layers, but the target's "
     "n_layers is 6 (expected every 2)"),
    (A, DEEP, "dus", {"every": 1}, "option every: not used by strategy 'dus' (it takes drop)"),
])
def test_bad_recipe_options(src, dst, strategy, options, needle):
    assert needle in fails(source_params(src), src, dst, strategy, KEY, **options)


def test_bad_options():
    params = source_params(A)
    assert "option block: not used by strategy 'stack' (it takes no options)" in fails(
        params, A, DEEP, "stack", KEY, block=2)
    assert "option noise: expected a number >= 0" in fails(params, A, DEEP, "stack_noise", KEY, noise=-1)
    assert "option block: expected an integer >= 1" in fails(params, A, DEEP, "stack_middle", KEY, block=0)
    other = source_params(B)
    assert "fusion partner" in fails(params, A, WIDE, "fusion", KEY, partner=other)


def test_source_params_of_the_wrong_shape_are_listed():
    message = fails(source_params(B), A, DEEP, "stack", KEY)
    assert message.startswith("source params")
    assert "missing head/w" in message and "missing pos/embedding" in message


def test_shape_check_lists_missing_extra_and_mismatched_paths():
    want = model.param_shapes(A)
    flat = dict(flatten(source_params(A)))
    del flat["blocks/attn/w_out"]
    flat["blocks/attn/bias"] = np.zeros(3, np.float32)
    flat["head/w"] = np.zeros((32, 65), np.float32)
    with pytest.raises(LaggrowError) as info:
        check_shapes(unflatten(flat), want, "grown")
    message = str(info.value)
    assert "missing blocks/attn/w_out" in message and "extra blocks/attn/bias" in message
    assert "mismatched head/w: (32, 65) float32, expected (32, 64) float32" in message


@pytest.mark.parametrize("cfg", [A, B, LA, LB], ids=["learned.untied", "rope.tied", "llama.bias", "llama.tied"])
def test_axis_table_describes_every_parameter(cfg):
    shapes = flatten(model.param_shapes(cfg))
    assert set(shapes) <= set(AXES)
    sizes = {"L": cfg.n_layers, "V": cfg.vocab_size, "S": cfg.max_seq_len, "3": 3, "Dh": cfg.head_dim,
             "D": cfg.d_model, "H": cfg.n_heads, "F": cfg.d_ff, "K": cfg.kv_heads}
    for path, spec in shapes.items():
        assert tuple(sizes[name.rstrip("<")] for name in AXES[path]) == spec.shape, path


def test_registry_metadata_is_complete():
    for name, s in STRATEGIES.items():
        assert s.name == name and s.kind in ("depth", "width")
        for text in (s.definition, s.reference):
            assert text and "\n" not in text
        assert get_strategy(name) is s
    rows = strategies_table()
    assert [r["name"] for r in rows] == list(STRATEGIES)
    table = strategies_markdown()
    assert all(f"| `{name}` |" in table for name in STRATEGIES)


def test_docs_table_is_the_registrys():
    doc = "docs/strategies.md"
    path = Path(__file__).resolve().parent.parent / doc
    text = path.read_text(encoding="utf-8")
    assert with_strategies_table(text) == text, \
        f"{doc} is stale: rewrite it with laggrow.growth.with_strategies_table"


def test_scratch_is_the_models_own_init():
    """The baseline must be what training from scratch starts from, not a look-alike."""
    dst = dataclasses.replace(A, n_layers=3)  # a test_growth case: its init is compiled once
    out = grow(source_params(A), A, dst, "scratch", KEY)
    reference = model.init_params(dst, fresh_init_key(jax.random.fold_in(KEY, 0)))  # stage 0's key
    for path, x in flatten(reference).items():
        np.testing.assert_array_equal(np.asarray(flatten(out)[path]), np.asarray(x), err_msg=path)


def test_from_params_sees_the_target(tmp_path):
    cfg = ModelConfig.from_params(grow(source_params(A), A, WIDE, "net2net", KEY), max_seq_len=16)
    assert cfg == WIDE
