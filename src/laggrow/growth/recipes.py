"""Up-scaling recipes as depth strategies: layer ranges (`slices`), SOLAR's depth up-scaling
(`dus`) and LLaMA Pro's block expansion (`block_expansion`).

Each is a plan (see depth.py): one `Slot` per target layer, made from half-open source layer
ranges concatenated in order, as mergekit's passthrough merge builds a model from
`slices: - sources: - layer_range: [start, stop]`. A range may be marked `zero`: its layers keep
their weights but their attention and MLP output projections are zero (llama's o_proj and
down_proj), so each is the identity, as LLaMA Pro's added blocks are.

The options' format, the same in a pool's YAML and (as YAML text) on `laggrow grow --ranges`:
`ranges: [[0, 4], [2, 4, zero]]`, a list of `[start, stop]` or `[start, stop, zero]`.

A slot is a `copy` when its source layer already appeared earlier in the plan (a repeat); a
layer of a zeroed range has its output projections zero whether it is a repeat or not. What is
checked without the source (the options' form) is checked by `check_options`; what needs the
depths (ranges inside the source, the total equal to the target's n_layers, a `drop` or `every`
that the target agrees with) by the plan, which `growth.check_request` runs before any array is
touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from laggrow.config import ModelConfig
from laggrow.config_engine import parse_yaml, shown
from laggrow.errors import LaggrowError
from laggrow.growth.depth import Slot, register_plan
from laggrow.growth.registry import Option, positive_int_or_none

ZERO = "zero"
RANGES_FORMAT = "a list of [start, stop] or [start, stop, zero] source layer ranges, e.g. [[0, 4], [2, 4, zero]]"

SOLAR = "Kim et al. 2023, SOLAR 10.7B: Scaling LLMs with Simple yet Effective Depth Up-Scaling (arXiv 2312.15166)"
LLAMA_PRO = "Wu et al. 2024, LLaMA Pro: Progressive LLaMA with Block Expansion (arXiv 2401.02415)"
MERGEKIT = "mergekit's passthrough merge, github.com/arcee-ai/mergekit"

Range = tuple  # (start, stop) or (start, stop, "zero"): the options' own form, so a check passes it again


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ranges(name: str, value: Any) -> tuple[Range, ...] | None:
    """The ranges as tuples (start, stop) or (start, stop, "zero"); anything but RANGES_FORMAT is
    one line (no other spelling of `zero`, no mappings). Checked ranges pass again unchanged."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
        raise LaggrowError(f"option {name}: expected {RANGES_FORMAT}, got {shown(value)}")
    out = []
    for i, entry in enumerate(value):
        form_ok = (isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)) and len(entry) in (2, 3)
                   and _is_int(entry[0]) and _is_int(entry[1])
                   and (len(entry) == 2 or entry[2] == ZERO))
        if not form_ok:
            raise LaggrowError(f"option {name}: entry {i} is {shown(entry)}; expected [start, stop] or "
                               f"[start, stop, zero] with integer start and stop ({RANGES_FORMAT})")
        start, stop = entry[0], entry[1]
        if start < 0 or stop <= start:
            raise LaggrowError(f"option {name}: entry {i} [{start}, {stop}] is empty or negative (expected "
                               f"0 <= start < stop: a range is half-open, [start, stop))")
        out.append(tuple(entry))
    return tuple(out)


def ranges_from_text(text: str, what: str = "--ranges") -> list:
    """`--ranges '[[0, 4], [2, 4, zero]]'`: the YAML text read into the list the option takes
    (checked by the option's own check), or one line when it is not YAML."""
    import yaml

    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, list):
        raise LaggrowError(f"{what} {shown(text)}: expected {RANGES_FORMAT}")
    return value


def non_negative_int_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise LaggrowError(f"option {name}: expected an integer >= 0, got {shown(value)}")
    return value


def slots_of_ranges(ranges: Sequence[Range]) -> list[Slot]:
    """The ranges concatenated, one slot per layer; a repeat of an earlier source layer is a copy."""
    seen: set[int] = set()
    slots = []
    for start, stop, *zero in ranges:
        for i in range(start, stop):
            slots.append(Slot(i, copy=i in seen, zero_out=bool(zero)))
            seen.add(i)
    return slots


# ---- slices ---------------------------------------------------------------------------------


def plan_slices(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    ranges = check_ranges("ranges", options.get("ranges"))
    if ranges is None:
        raise LaggrowError(f"option ranges: strategy slices needs it (expected {RANGES_FORMAT})")
    for i, (start, stop, *_) in enumerate(ranges):
        if stop > n:
            raise LaggrowError(f"option ranges: entry {i} [{start}, {stop}] reaches past the source's {n} layers "
                               f"(expected stop <= {n})")
    total = sum(stop - start for start, stop, *_ in ranges)
    if total != n_target:
        raise LaggrowError(f"option ranges: the ranges hold {total} layers, but the target's n_layers is "
                           f"{n_target} (expected ranges totalling {n_target})")
    return slots_of_ranges(ranges)


# ---- dus: SOLAR's depth up-scaling ----------------------------------------------------------


def dus_depths(n: int) -> dict[int, int]:
    """{target depth: drop} for every growth dus can make from n layers."""
    return {2 * n - 2 * m: m for m in range(n) if 2 * n - 2 * m > n}


def check_reachable(strategy: str, rule: str, option: str, depths: dict[int, int], n: int, n_target: int) -> int:
    """The option value that grows n layers to n_target (`depths`: {target depth: option value}),
    or one line listing the depths the recipe can reach from n."""
    if n_target not in depths:
        possible = ", ".join(f"{d} ({option} {v})" for d, v in depths.items())
        raise LaggrowError(f"strategy {strategy}: {rule}, so from {n} layers possible n_layers: {possible}; "
                           f"got {n_target}")
    return depths[n_target]


def check_dus_depth(n: int, n_target: int) -> int:
    return check_reachable("dus", "makes 2L - 2*drop layers", "drop", dus_depths(n), n, n_target)


def check_dus(src: ModelConfig, dst: ModelConfig) -> None:
    check_dus_depth(src.n_layers, dst.n_layers)


def plan_dus(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    drop = non_negative_int_or_none("drop", options.get("drop"))
    if drop is None:
        drop = check_dus_depth(n, n_target)
    if drop >= n:
        raise LaggrowError(f"option drop: {drop} leaves no layer of the source's {n} (expected drop < {n})")
    if 2 * n - 2 * drop != n_target:
        fit = dus_depths(n).get(n_target)
        hint = f"drop {fit}" if fit is not None else f"one of n_layers {', '.join(map(str, dus_depths(n)))}"
        raise LaggrowError(f"option drop: {drop} gives 2*{n} - 2*{drop} = {2 * n - 2 * drop} layers, but the "
                           f"target's n_layers is {n_target} (expected {hint})")
    return slots_of_ranges([(0, n - drop), (drop, n)])


# ---- block_expansion: LLaMA Pro -------------------------------------------------------------


def expansion_depths(n: int) -> dict[int, int]:
    """{target depth: every} for every growth block expansion can make from n layers."""
    return {n + n // every: every for every in range(n, 0, -1) if n % every == 0}


def check_expansion_depth(n: int, n_target: int) -> int:
    return check_reachable("block_expansion", "adds one identity layer per group of `every` layers (every divides L)",
                           "every", expansion_depths(n), n, n_target)


def check_block_expansion(src: ModelConfig, dst: ModelConfig) -> None:
    check_expansion_depth(src.n_layers, dst.n_layers)


def plan_block_expansion(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    every = positive_int_or_none("every", options.get("every"))
    if every is None:
        every = check_expansion_depth(n, n_target)
    if n % every:
        divisors = ", ".join(str(e) for e in range(1, n + 1) if n % e == 0)
        raise LaggrowError(f"option every: {every} does not divide the source's {n} layers (LLaMA Pro's groups "
                           f"are equal; expected one of {divisors})")
    if n + n // every != n_target:
        fit = expansion_depths(n).get(n_target)
        hint = f"every {fit}" if fit is not None else f"one of n_layers {', '.join(map(str, expansion_depths(n)))}"
        raise LaggrowError(f"option every: {every} gives {n} + {n}/{every} = {n + n // every} layers, but the "
                           f"target's n_layers is {n_target} (expected {hint})")
    slots = []
    for group in range(n // every):
        last = (group + 1) * every - 1
        slots += [Slot(i) for i in range(group * every, last + 1)]
        slots.append(Slot(last, copy=True, zero_out=True))
    return slots


register_plan(
    "slices", plan_slices, function_preserving=False,
    options={"ranges": Option(None, check_ranges, "source layer ranges [[start, stop], [start, stop, zero], ...]")},
    preserving_note="exact when the ranges not zeroed concatenate to [0, L)",
    definition="mergekit passthrough: the target's layers are the half-open source ranges of `ranges` "
               "concatenated in order ([[0, 4], [2, 4, zero]]); a range marked zero has its attention and "
               "MLP output projections zero (identity layers); the ranges total L'",
    reference=MERGEKIT)
register_plan(
    "dus", plan_dus, function_preserving=False, check=check_dus,
    options={"drop": Option(None, non_negative_int_or_none, "layers dropped at the seam (default: from L')")},
    definition="SOLAR depth up-scaling: layers [0, L-drop) then [drop, L), L' = 2L - 2*drop (drop "
               "defaults to what L' needs)",
    reference=SOLAR)
register_plan(
    "block_expansion", plan_block_expansion, function_preserving=True, check=check_block_expansion,
    options={"every": Option(None, positive_int_or_none, "layers per group (default: L / (L'-L))")},
    definition="LLaMA Pro: the L layers split into L/`every` groups, each followed by a copy of its last "
               "layer with output projections zero, L' = L + L/every (`every` divides L; default "
               "L/(L'-L)); copy_zero instead puts all copies in one block at MIDAS's middle, each after "
               "the block, copying the layer at its place in the block",
    reference=LLAMA_PRO)
