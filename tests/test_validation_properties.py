"""Property-based tests of the validators: generated configs, pools and `--set` values, good and
bad, in every field of every section, scalars where sections belong, unknown keys and near
misses, non-finite floats, huge and negative integers, strings, booleans, lists and mappings.

The property: a validator returns a config that validates (and survives its own round trip), or
raises LaggrowError with a one-line message; never any other exception. Through the real CLI,
values generated to be invalid end in exit code 2, one line on stderr, no traceback and no --out.
"""

from __future__ import annotations

import dataclasses
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from laggrow.cli import app
from laggrow.config import SECTIONS, load_run_config, run_config_from_dict
from laggrow.config_engine import apply_overrides, parse_yaml, read_yaml
from laggrow.errors import LaggrowError
from laggrow.pool.spec import PoolConfig, pool_config_from_dict

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
FIELDS = {name: {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}
          for name, cls in SECTIONS.items()}
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_error(call, *args):
    """Run `call(*args)`: its result, or None when it raised a one-line LaggrowError."""
    try:
        return call(*args)
    except LaggrowError as err:
        message = str(err)
        assert message and "\n" not in message, repr(message)
        assert len(message) < 1000, message
        return None


# ---- generated values ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1),
    st.text(max_size=10), st.sampled_from(["learned", "rope", "cosine", "linear", "byte", "bpe", "bfloat16"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=5)


def near_miss(name: str) -> st.SearchStrategy[str]:
    """A field name with one character dropped, doubled or swapped for another."""
    return st.tuples(st.integers(0, len(name) - 1), st.sampled_from(["drop", "double", "swap"]),
                     st.sampled_from("abcdefghijklmnopqrstuvwxyz_")).map(
        lambda t: {"drop": name[:t[0]] + name[t[0] + 1:], "double": name[:t[0]] + name[t[0]] + name[t[0]:],
                   "swap": name[:t[0]] + t[2] + name[t[0] + 1:]}[t[1]])


def plausible(typ) -> st.SearchStrategy:
    """Values of the right type, mostly in range, so that some configs are valid."""
    if typ is int:
        return st.integers(0, 64)
    if typ is float:
        return st.floats(0, 1, allow_nan=False)
    if typ is bool:
        return st.booleans()
    return st.sampled_from(["learned", "rope", "float32", "cosine", "constant", "byte", "kjv", "text"])


def section_of(name: str) -> st.SearchStrategy[dict]:
    fields = FIELDS[name]
    keys = st.one_of(st.sampled_from(sorted(fields)), *(near_miss(f) for f in sorted(fields)),
                     st.text(max_size=8), st.integers())
    known = st.sampled_from(sorted(fields)).flatmap(lambda f: st.tuples(st.just(f), plausible(fields[f])))
    return st.one_of(
        st.dictionaries(keys, values, max_size=4),
        st.lists(known, max_size=5).map(dict),  # right keys and types: often a valid section
        st.lists(known, max_size=5).flatmap(lambda good: st.tuples(keys, values).map(
            lambda bad: {**dict(good), bad[0]: bad[1]})),
    )


run_dicts = st.fixed_dictionaries({}, optional={
    name: st.one_of(section_of(name), values) for name in SECTIONS}).flatmap(
    lambda raw: st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), values, max_size=1).map(
        lambda extra: {**raw, **extra}) | st.just(raw))


def check_valid(cfg) -> None:
    """A config that was accepted validates again and survives its own round trip."""
    cfg.validate()
    assert run_config_from_dict(cfg.to_dict()) == cfg


# ---- the validators -----------------------------------------------------------------------------


@FAST
@given(run_dicts)
def test_run_config_from_dict_accepts_or_says_one_line(raw):
    cfg = one_line_error(run_config_from_dict, raw)
    if cfg is not None:
        check_valid(cfg)


def set_items() -> st.SearchStrategy[str]:
    dotted = st.one_of(
        st.sampled_from(sorted(SECTIONS)).flatmap(lambda s: st.sampled_from(sorted(FIELDS[s])).map(
            lambda f: f"{s}.{f}")),
        st.sampled_from(sorted(SECTIONS)).flatmap(lambda s: near_miss(s).map(lambda n: f"{n}.lr")),
        st.text(max_size=12),
    )
    text = st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                     st.text(max_size=12), st.sampled_from([".inf", "-.inf", ".nan", "1e20", "1e400", "-1",
                                                            "4294967296", "3000000000", "9" * 400, "!!binary aGk="]))
    good = st.sampled_from(sorted(SECTIONS)).flatmap(lambda s: st.sampled_from(sorted(FIELDS[s])).flatmap(
        lambda f: plausible(FIELDS[s][f]).map(lambda v: f"{s}.{f}={yaml.safe_dump(v).splitlines()[0]}")))
    return st.one_of(good, good, st.tuples(dotted, text).map(lambda t: f"{t[0]}={t[1]}"), st.text(max_size=12))


@FAST
@given(st.lists(set_items(), max_size=4))
def test_set_overrides_on_a_real_config_accept_or_say_one_line(items):
    raw = read_yaml(TINY)
    cfg = one_line_error(lambda: run_config_from_dict(apply_overrides(raw, items)))
    if cfg is not None:
        check_valid(cfg)


@FAST
@given(st.one_of(values.map(lambda v: yaml.safe_dump({"model": v, "train": v})), st.text(max_size=40),
                 st.sampled_from(["model: 5\n", "train: [1]\n", "[1, 2]\n", "model: {n_layers: ", "\x00",
                                  "a: " + "[" * 1200, "x: " + "1" * 5000, "model: !!python/object:os.system x"])))
def test_a_config_file_of_any_text_loads_or_says_one_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        cfg = one_line_error(load_run_config, path)
    if cfg is not None:
        check_valid(cfg)


@pytest.mark.parametrize("text", ["x: " + "1" * 5000, "[" * 1200 + "]" * 1200], ids=["5000 digits", "deep"])
def test_parse_yaml_raises_only_yaml_errors_for_pathological_text(text):
    with pytest.raises(yaml.YAMLError):  # PyYAML itself raises ValueError / RecursionError here
        parse_yaml(text)


POOL_FIELDS = {f.name for f in dataclasses.fields(PoolConfig)}
GOOD_POOL = {"source": "/nowhere", "target": {"n_layers": 3}, "strategies": ["stack", "zero_top"],
             "seeds": [0], "lag_steps": 2, "final_steps": 4, "eval_points": 3}
strategy_entries = st.one_of(
    st.sampled_from(["stack", "zero_top", "stack_noise", "copy_zero"]),
    st.fixed_dictionaries({"name": st.sampled_from(["stack", "stack_noise", "stack_middle"])},
                          optional={"lr_scale": values, "label": values, "noise": values, "block": values}),
    values,
)
plausible_pool = st.one_of(
    st.tuples(st.sampled_from(["lag_steps", "final_steps", "eval_points", "chunk_size", "checkpoint_every"]),
              st.integers(0, 6)),
    st.tuples(st.just("seeds"), st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("optimizer_state"), st.sampled_from(["reset", "carry"])),
    st.tuples(st.just("target"), st.fixed_dictionaries({"n_layers": st.integers(2, 4)})),
    st.tuples(st.just("train"), st.dictionaries(st.sampled_from(["lr", "dropout", "weight_decay"]),
                                                st.floats(0, 0.5), max_size=2)),
    st.tuples(st.just("strategies"), st.lists(strategy_entries, min_size=1, max_size=3)),
)
arbitrary_pool = st.tuples(
    st.one_of(st.sampled_from(sorted(POOL_FIELDS)), *(near_miss(f) for f in ("seeds", "target", "eval_points"))),
    st.one_of(values, st.lists(strategy_entries, max_size=3), section_of("train"), section_of("model"),
              st.lists(st.integers(-2, 2**33), max_size=3)))
pool_changes = st.lists(st.one_of(plausible_pool, plausible_pool, arbitrary_pool), max_size=3).map(dict)


@FAST
@given(pool_changes)
def test_pool_config_from_dict_accepts_or_says_one_line(changes):
    pool = one_line_error(pool_config_from_dict, {**GOOD_POOL, **changes})
    if pool is not None:
        assert pool_config_from_dict(pool.to_dict() | {"strategies": [
            {"name": s.name, "label": s.label, "lr_scale": s.lr_scale, **s.options} for s in pool.strategies]}) == pool
        target = one_line_error(pool.target_run_config, load_run_config(TINY))
        if target is not None:
            check_valid(target)


# ---- the real CLI, with values generated to be invalid ------------------------------------------

FLOATS = [f"{s}.{f}" for s in SECTIONS for f, t in FIELDS[s].items() if t is float]
INTS = [f"{s}.{f}" for s in SECTIONS for f, t in FIELDS[s].items() if t is int]
CHOICES = {"model.pos_emb": ("learned", "rope"), "model.dtype": ("float32", "bfloat16"),
           "data.tokenizer": ("byte", "bpe"), "train.schedule": ("cosine", "linear", "constant")}
WRONG_TYPE = ["abc", "[1, 2]", "{a: 1}", "true", "null"]
identifiers = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


@st.composite
def invalid_settings(draw) -> str:
    """One `--set` item that no config may accept."""
    kind = draw(st.sampled_from(["float", "int", "choice", "bool", "unknown", "section", "malformed"]))
    if kind == "float":  # every float field is finite and >= 0 (most > 0 or bounded)
        value = draw(st.one_of(st.sampled_from([".inf", "-.inf", ".nan", "1e400", *WRONG_TYPE]),
                               st.floats(max_value=-1e-6, allow_infinity=False).map(repr)))
        return f"{draw(st.sampled_from(FLOATS))}={value}"
    if kind == "int":  # every int field is >= 0 and within uint32
        value = draw(st.one_of(st.integers(max_value=-1).map(str), st.integers(min_value=2**32).map(str),
                               st.sampled_from(["1e20", "2.5", *WRONG_TYPE])))
        return f"{draw(st.sampled_from(INTS))}={value}"
    if kind == "choice":
        key = draw(st.sampled_from(sorted(CHOICES)))
        word = draw(identifiers.filter(lambda w: w not in CHOICES[key]
                                       and not isinstance(parse_yaml(w), bool) and parse_yaml(w) is not None))
        return f"{key}={word}"
    if kind == "bool":
        return f"model.tie_embeddings={draw(st.sampled_from(['0', '1', '2.5', '[true]', 'abc']))}"
    if kind == "unknown":
        section = draw(st.sampled_from(sorted(SECTIONS)))
        key = draw(st.one_of(identifiers, near_miss(draw(st.sampled_from(sorted(FIELDS[section]))))).filter(
            lambda k: k not in FIELDS[section]))
        return f"{section}.{key}=1"
    if kind == "section":  # a scalar where a section belongs, or an unknown section
        return draw(st.one_of(st.sampled_from(["model=5", "train=[1]", "data.=1", ".lr=1"]),
                              identifiers.filter(lambda s: s not in SECTIONS).map(lambda s: f"{s}.lr=1")))
    return draw(st.text(alphabet="abcdefghij._ ", min_size=1, max_size=10).filter(lambda t: "=" not in t))


@CLI
@given(st.lists(st.one_of(st.just("train.steps=3"), st.just("model.n_layers=1")), max_size=1), invalid_settings())
def test_the_train_command_refuses_invalid_settings_in_one_line(good, bad):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        args = ["train", str(TINY), "--out", str(out)]
        for item in [*good, bad]:
            args += ["--set", item]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (bad, result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (bad, result.stderr)
        assert "Traceback" not in result.output
        assert not out.exists(), bad


@st.composite
def invalid_pools(draw) -> dict:
    """A pool with one value no pool may hold."""
    key, value = draw(st.sampled_from([
        ("seeds", [-1]), ("seeds", [2**32]), ("seeds", "0"), ("seeds", []), ("eval_points", 3_000_000_000),
        ("eval_points", 1), ("lag_steps", 0), ("final_steps", 3_000_000_000), ("target", 5), ("train", [1]),
        ("train", {"lr": float("inf")}), ("train", {"lr": float("nan")}), ("train", {"seed": -1}),
        ("strategies", [{"name": "stack", "lr_scale": float("nan")}]), ("strategies", []),
        ("strategies", [5]), ("chunk_size", -1), ("optimizer_state", "keep"), ("target", {"n_layer": 3}),
    ]))
    return {**GOOD_POOL, key: value, **({"lag_steps": 2} if key == "final_steps" else {})}


@CLI
@given(invalid_pools())
def test_the_probe_command_refuses_invalid_pools_in_one_line(pool):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "pool.yaml", Path(tmp) / "out"
        path.write_text(yaml.safe_dump(pool))
        result = CliRunner().invoke(app, ["probe", str(path), "--out", str(out)])
        assert result.exit_code == 2, (pool, result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "/nowhere" not in lines[0], result.stderr
        assert not out.exists()
