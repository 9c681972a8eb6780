"""The registry of growth strategies, their metadata, and the context a strategy runs in.

A strategy is a pure function `fn(params, src_cfg, dst_cfg, ctx) -> params` plus metadata:
kind (depth or width), whether it preserves the function exactly, a one-line definition and a
reference. The README's table is rendered from here (`strategies_markdown`), so the two agree.

The same function serves two purposes, told apart by `ctx.moments`:
- growing parameters: fresh units come from a seeded init, noise is added, fan-ins are split;
- carrying optimizer moments through the *structural* part of the transform: copies take
  their source's moments, everything new is zero, no noise and no splitting.
Writing each strategy once keeps the two in step: a copy in the params is a copy in the moments.
"""

from __future__ import annotations

import difflib
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from laggrow.config import ModelConfig
from laggrow.config_engine import shown
from laggrow.errors import LaggrowError

Params = dict
StrategyFn = Callable[[Params, ModelConfig, ModelConfig, "Context"], Params]


@dataclass(frozen=True)
class Option:
    """A keyword option of a strategy: its default and a check that returns the cleaned value."""

    default: Any
    check: Callable[[str, Any], Any]
    help: str


def non_negative_float(name: str, value: Any) -> float:
    # NaN passes `value < 0`, and would then mean "no noise" here and a NaN in growth.json
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    if not math.isfinite(number) or number < 0:
        raise LaggrowError(f"option {name}: expected a number >= 0 and finite, got {shown(value)}")
    return number


def positive_int_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaggrowError(f"option {name}: expected an integer >= 1, got {shown(value)}")
    return value


def params_or_none(name: str, value: Any) -> Params | None:
    if value is not None and not isinstance(value, Mapping):
        raise LaggrowError(f"option {name}: expected a params tree (nested dict), got {type(value).__name__}")
    return value


NOISE_OPTION = Option(0.0, non_negative_float, "relative std of the added noise")
BLOCK_OPTION = Option(None, positive_int_or_none, "layers per copied block (default: the growth)")
PARTNER_OPTION = Option(None, params_or_none, "params of the second model (default: a copy)")


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # "depth" | "width"
    function_preserving: bool
    definition: str
    reference: str
    fn: StrategyFn = field(repr=False)
    options: Mapping[str, Option] = field(default_factory=dict)
    # Depth strategies that copy layers expose their plan: (L, L', options) -> list of Slot.
    plan: Callable[..., list] | None = field(default=None, repr=False)
    # When the flag holds only under some options (fusion: only with a copy of itself), a note
    # for the table and the test of the options.
    preserving_note: str = ""
    preserving_if: Callable[[Mapping[str, Any]], bool] | None = field(default=None, repr=False)
    # A depth strategy that ignores the source's shape (scratch) may also change the width.
    any_target: bool = False
    # Raises a one-line LaggrowError (saying what is possible) for sizes it cannot produce.
    check: Callable[[ModelConfig, ModelConfig], None] | None = field(default=None, repr=False)

    def supports(self, src: ModelConfig, dst: ModelConfig) -> bool:
        if self.check is None:
            return True
        try:
            self.check(src, dst)
        except LaggrowError:
            return False
        return True

    def preserves(self, options: Mapping[str, Any]) -> bool:
        """Whether a call with these (checked) options preserves the function."""
        if self.preserving_if is not None and not self.preserving_if(options):
            return False
        return self.function_preserving


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, *, kind: str, function_preserving: bool, definition: str, reference: str,
             options: Mapping[str, Option] | None = None, plan: Callable[..., list] | None = None,
             preserving_note: str = "",
             preserving_if: Callable[[Mapping[str, Any]], bool] | None = None,
             any_target: bool = False,
             check: Callable[[ModelConfig, ModelConfig], None] | None = None,
             ) -> Callable[[StrategyFn], StrategyFn]:
    assert kind in ("depth", "width"), kind
    assert name not in STRATEGIES, f"strategy {name} registered twice"

    def decorate(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = Strategy(name, kind, function_preserving, definition, reference, fn,
                                    dict(options or {}), plan, preserving_note, preserving_if, any_target, check)
        return fn

    return decorate


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; an unknown name is a one-line error suggesting the nearest."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    near = difflib.get_close_matches(name, list(STRATEGIES), n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'?" if near else "see `laggrow strategies`"
    raise LaggrowError(f"strategy '{name}': unknown ({hint})")


def parse_strategy(spec: str) -> list[Strategy]:
    """`"stack_middle"` or `"hypercloning+stack_middle"` (one width and one depth strategy, width
    first) -> the strategies in the order they run."""
    if not isinstance(spec, str) or not spec.strip():
        raise LaggrowError(f"strategy: expected a name such as 'stack_middle', got {spec!r}")
    parts = [get_strategy(part.strip()) for part in spec.split("+")]
    if len(parts) == 1:
        return parts
    kinds = [s.kind for s in parts]
    if kinds != ["width", "depth"]:
        raise LaggrowError(f"strategy '{spec}': expected one width strategy then one depth strategy, "
                           f"e.g. 'hypercloning+stack_middle' (got kinds {'+'.join(kinds)})")
    return parts


def check_options(strategies: list[Strategy], options: Mapping[str, Any]) -> dict[str, Any]:
    """Options cleaned and completed with defaults; an option no strategy takes is an error."""
    accepted: dict[str, Option] = {}
    for strategy in strategies:
        accepted.update(strategy.options)
    for name in options:
        if name not in accepted:
            names = "+".join(s.name for s in strategies)
            takes = ", ".join(sorted(accepted)) or "no options"
            raise LaggrowError(f"option {name}: not used by strategy '{names}' (it takes {takes})")
    return {name: opt.check(name, options.get(name, opt.default)) for name, opt in accepted.items()}


def key_words(key: jax.Array) -> list[int]:
    """The integers of a jax PRNG key, typed (`jax.random.key`) or raw (`PRNGKey`)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(w) for w in np.asarray(key).ravel()]


def purpose_seed(key: jax.Array, purpose: str, *ints: int) -> list[int]:
    """A seed for one purpose ("fresh", "noise/blocks/mlp/w_in", ...): the key's words, a stable
    hash of the purpose (crc32, not Python's salted hash) and `ints`, so the same key always
    gives the same growth and different purposes get independent streams."""
    return key_words(key) + [zlib.crc32(purpose.encode())] + [int(i) for i in ints]


def fresh_init_key(stage_key: jax.Array) -> jax.Array:
    """The key `model.init_params` gets for a stage's fresh units (and for `scratch`)."""
    return jax.random.fold_in(stage_key, zlib.crc32(b"fresh") & 0x7FFFFFFF)


@dataclass
class Context:
    """What a strategy needs besides the params: randomness, options, and the mode.

    Randomness is numpy's (growth is host-side surgery, see ops.py), seeded from the jax key;
    only the fresh init goes through jax, as `model.init_params` with a key derived for it."""

    key: jax.Array
    options: dict[str, Any]
    moments: bool = False  # True: carrying optimizer moments (structure only: copies and zeros)
    _fresh: dict = field(default_factory=dict)

    def rng(self, purpose: str, *ints: int) -> np.random.Generator:
        """Moments use randomness only for structure (net2net's random unit map), never for
        values, so the same key gives the moments the same structure as the params."""
        return np.random.default_rng(purpose_seed(self.key, purpose, *ints))

    @property
    def split(self) -> bool:
        """Divide fan-ins over copies? For params yes (to keep the function); moments of a copy
        are its source's moments, undivided."""
        return not self.moments

    def fresh(self, cfg: ModelConfig) -> Params:
        """A fresh init of `cfg` as numpy arrays (zeros for moments: new units have no history)."""
        if cfg not in self._fresh:
            from laggrow import model

            if self.moments:
                tree = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model.param_shapes(cfg))
            else:
                tree = jax.tree.map(np.asarray, model.init_params(cfg, fresh_init_key(self.key)))
            self._fresh[cfg] = tree
        return self._fresh[cfg]


def strategies_table(strategies: Mapping[str, Strategy] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready record per strategy (what `laggrow strategies --json` prints)."""
    rows = []
    for s in (strategies or STRATEGIES).values():
        rows.append({"name": s.name, "kind": s.kind, "function_preserving": s.function_preserving,
                     "definition": s.definition, "reference": s.reference,
                     "options": {k: o.help for k, o in s.options.items()},
                     "preserving_note": s.preserving_note})
    return rows


def strategies_markdown(strategies: Mapping[str, Strategy] | None = None) -> str:
    """The README's table of strategies, rendered from the registry."""
    lines = ["| name | kind | function-preserving | definition | reference |",
             "|---|---|---|---|---|"]
    for row in strategies_table(strategies):
        flag = "yes" if row["function_preserving"] else "no"
        if row["preserving_note"]:
            flag += f" ({row['preserving_note']})"
        lines.append(f"| `{row['name']}` | {row['kind']} | {flag} | {row['definition']} | {row['reference']} |")
    return "\n".join(lines) + "\n"


TABLE_START, TABLE_END = "<!-- strategies-table:start -->", "<!-- strategies-table:end -->"


def with_strategies_table(text: str) -> str:
    """`text` (README.md, docs/strategies.md) with the table between the markers
    `<!-- strategies-table:start -->` and `<!-- strategies-table:end -->` re-rendered."""
    head, sep, rest = text.partition(TABLE_START)
    _, sep2, tail = rest.partition(TABLE_END)
    if not (sep and sep2):
        raise LaggrowError(f"strategies table: expected the markers {TABLE_START} ... {TABLE_END}")
    return f"{head}{TABLE_START}\n{strategies_markdown()}{TABLE_END}{tail}"
