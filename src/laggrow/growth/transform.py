"""`grow` and `grow_opt_state`: validate a growth request, run its strategies, check the result.

A request is a source config, a target config and a strategy name, possibly composed
("hypercloning+stack_middle": the width strategy runs first, from the source to an intermediate
config with the target's width and the source's depth, then the depth strategy). Every bad
request fails before any array is touched, with one line naming what is wrong and what is
possible; every result is checked against `param_shapes(dst_cfg)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from laggrow import model, train
from laggrow.config import ModelConfig, TrainConfig
from laggrow.errors import LaggrowError
from laggrow.growth.depth import Slot, apply_plan
from laggrow.growth.layout import check_shapes, to_jax, to_numpy
from laggrow.growth.registry import Context, Strategy, check_options, parse_strategy

Params = dict
Stage = tuple[Strategy, ModelConfig, ModelConfig]

GROWN_FIELDS = ("n_layers", "d_model", "n_heads", "d_ff")
WIDTH_FIELDS = ("d_model", "n_heads", "n_kv_heads", "d_ff")
KEPT_FIELDS = ("arch", "vocab_size", "pos_emb", "rope_theta", "tie_embeddings", "qkv_bias")


def check_target(src: ModelConfig, dst: ModelConfig) -> None:
    """What any growth needs: the same architecture, vocabulary, positions, tying, head_dim and
    query heads per KV head; nothing smaller."""
    for name in KEPT_FIELDS:
        if getattr(src, name) != getattr(dst, name):
            raise LaggrowError(f"model.{name}: growth keeps it; expected {getattr(src, name)!r} "
                               f"(the source's), got {getattr(dst, name)!r}")
    if src.pos_emb == "learned" and src.max_seq_len != dst.max_seq_len:
        raise LaggrowError(f"model.max_seq_len: growth keeps the learned position table; expected "
                           f"{src.max_seq_len} (the source's), got {dst.max_seq_len}")
    for name in GROWN_FIELDS:
        old, new = getattr(src, name), getattr(dst, name)
        if new < old:
            raise LaggrowError(f"model.{name}: the target ({new}) is smaller than the source ({old}); "
                               f"growth never shrinks")
    if dst.head_dim != src.head_dim or dst.d_model % dst.n_heads:
        need = dst.d_model // src.head_dim
        raise LaggrowError(f"model.n_heads: width growth keeps head_dim {src.head_dim} (RoPE and the "
                           f"1/sqrt(head_dim) attention scale are exact only then), so d_model "
                           f"{dst.d_model} needs n_heads {need}, got {dst.n_heads}")
    group = src.n_heads // src.kv_heads  # query heads per key/value head: 1 for gpt
    if dst.n_heads % group:
        raise LaggrowError(f"model.n_heads: width growth keeps {group} query heads per key/value head "
                           f"(heads grow in whole groups), so expected a multiple of {group}, got {dst.n_heads}")
    if dst.kv_heads != dst.n_heads // group:
        raise LaggrowError(f"model.n_kv_heads: width growth keeps {group} query heads per key/value head "
                           f"(heads grow in whole groups), so n_heads {dst.n_heads} needs n_kv_heads "
                           f"{dst.n_heads // group}, got {dst.kv_heads}")


def check_grows(src: ModelConfig, dst: ModelConfig, what: str = "target") -> None:
    """A growth must grow something: the same size is refused (grow, probe and run share this)."""
    if all(getattr(dst, f) == getattr(src, f) for f in GROWN_FIELDS):
        raise LaggrowError(f"{what}: expected a model larger than the source ({src.n_layers} layers, "
                           f"d_model {src.d_model}, d_ff {src.d_ff}), got the same size")


def _changed(src: ModelConfig, dst: ModelConfig, fields: tuple[str, ...]) -> list[str]:
    return [f"{f} {getattr(src, f)} -> {getattr(dst, f)}" for f in fields if getattr(src, f) != getattr(dst, f)]


def plan_stages(src: ModelConfig, dst: ModelConfig, strategy: str) -> list[Stage]:
    """The (strategy, from, to) steps of a request, after checking each strategy can make them."""
    check_target(src, dst)
    strategies = parse_strategy(strategy)
    if len(strategies) == 2:
        width, depth = strategies
        mid = dataclasses.replace(src, **{f: getattr(dst, f) for f in WIDTH_FIELDS})
        stages = [(width, src, mid), (depth, mid, dst)]
    else:
        stages = [_single_stage(strategies[0], src, dst)]
    for strat, s, d in stages:
        if strat.check is not None:
            strat.check(s, d)
    return stages


def _single_stage(only: Strategy, src: ModelConfig, dst: ModelConfig) -> Stage:
    if only.kind == "depth" and not only.any_target and _changed(src, dst, WIDTH_FIELDS):
        raise LaggrowError(f"strategy {only.name} grows depth only, but the target changes "
                           f"{', '.join(_changed(src, dst, WIDTH_FIELDS))}: compose a width strategy "
                           f"first, e.g. 'hypercloning+{only.name}'")
    if only.kind == "width" and src.n_layers != dst.n_layers:
        raise LaggrowError(f"strategy {only.name} grows width only, but the target changes n_layers "
                           f"{src.n_layers} -> {dst.n_layers}: compose a depth strategy after it, "
                           f"e.g. '{only.name}+stack_middle'")
    return (only, src, dst)


def check_request(src: ModelConfig, dst: ModelConfig, strategy: str,
                  options: Mapping[str, Any]) -> tuple[list[Stage], dict[str, Any]]:
    """Every check of a request that needs no weights: the stages, the options' form, and for a
    depth strategy made by a plan, that its plan under these options makes the target's depth
    (ranges inside the source, a `drop` or `every` the target agrees with). Returns the stages and
    the checked options with their defaults."""
    stages = plan_stages(src, dst, strategy)
    options = check_options([s for s, _, _ in stages], options)
    for strat, s, d in stages:
        if strat.plan is not None and len(strat.plan(s.n_layers, d.n_layers, options)) != d.n_layers:
            raise LaggrowError(f"strategy {strat.name}: its plan does not make the target's {d.n_layers} layers")
    return stages, options


def _prepare(src: ModelConfig, dst: ModelConfig, strategy: str,
             options: Mapping[str, Any]) -> tuple[list[Stage], dict[str, Any]]:
    stages, options = check_request(src, dst, strategy, options)
    if options.get("partner") is not None:
        check_shapes(options["partner"], model.param_shapes(src),
                     "fusion partner (expected the source's shape)")
    return stages, options


def _run(tree: Params, stages: list[Stage], key: jax.Array, options: dict[str, Any], moments: bool) -> Params:
    for i, (strategy, s, d) in enumerate(stages):
        ctx = Context(jax.random.fold_in(key, i), options, moments=moments)
        tree = strategy.fn(tree, s, d, ctx)
    return tree


def grow(params: Params, src_cfg: ModelConfig, dst_cfg: ModelConfig, strategy: str,
         key: jax.Array, **options: Any) -> Params:
    """A new params tree of `dst_cfg` grown from `params` (of `src_cfg`) by `strategy`.

    Pure: no I/O, `params` is never mutated, and the same key gives the same output. Options:
    `noise` (relative std, hypercloning and stack_noise), `block` (layers per copied block,
    stack_top / stack_middle / stack_bottom / copy_zero), `partner` (fusion's second model),
    `ranges` (slices), `drop` (dus), `every` (block_expansion).
    """
    stages, options = _prepare(src_cfg, dst_cfg, strategy, options)
    check_shapes(params, model.param_shapes(src_cfg), "source params (expected the source config's shapes)")
    grown = to_jax(_run(to_numpy(params), stages, key, options, moments=False))
    check_shapes(grown, model.param_shapes(dst_cfg), f"strategy {strategy}: grown params do not match the target")
    return grown


def is_function_preserving(strategy: str, **options: Any) -> bool:
    """Whether this growth (with these options) reproduces the source model's logits exactly."""
    strategies = parse_strategy(strategy)
    options = check_options(strategies, options)
    return all(s.preserves(options) for s in strategies)


def grow_opt_state(opt_state: Any, src_cfg: ModelConfig, dst_cfg: ModelConfig, strategy: str,
                   key: jax.Array, **options: Any) -> Any:
    """Carry an optimizer state through the structural part of a growth.

    Every subtree shaped like the source params (AdamW's mu and nu) goes through the same
    strategy in moments mode: copied units take their source's moments, new units (fresh layers,
    padding, zeroed projections, a fusion partner's units) are zero, nothing is divided and no
    noise is added. Everything else (step counts, empty states) is kept as it is. Pass the `key`
    given to `grow`: net2net's random unit map is structure, and must match the params'.
    """
    stages, options = _prepare(src_cfg, dst_cfg, strategy, options)
    return _carry_moments(opt_state, src_cfg, dst_cfg, f"strategy {strategy}",
                          lambda tree: _run(tree, stages, key, options, moments=True))


def _carry_moments(opt_state: Any, src_cfg: ModelConfig, dst_cfg: ModelConfig, what: str,
                   grow_tree: Callable[[Params], Params]) -> Any:
    """`grow_tree` (numpy in, numpy out) applied to every subtree of `opt_state` shaped like the
    source params; everything else kept."""
    src_def = jax.tree.structure(model.param_shapes(src_cfg))
    dst_shapes = model.param_shapes(dst_cfg)

    def is_moments(node: Any) -> bool:
        return isinstance(node, Mapping) and jax.tree.structure(node) == src_def

    def carry(node: Any) -> Any:
        if not is_moments(node):
            return node
        check_shapes(node, model.param_shapes(src_cfg), "optimizer moments (expected the source's shapes)")
        grown = to_jax(grow_tree(to_numpy(node)))
        check_shapes(grown, dst_shapes, f"{what}: carried moments do not match the target")
        return grown

    return jax.tree.map(carry, opt_state, is_leaf=is_moments)


# ---- depth growth by an explicit plan (laggrow stack) -----------------------------------------------


def _check_plan(src_cfg: ModelConfig, dst_cfg: ModelConfig, slots: Sequence[Slot]) -> None:
    check_target(src_cfg, dst_cfg)
    changed = _changed(src_cfg, dst_cfg, WIDTH_FIELDS)
    if changed:
        raise LaggrowError(f"a layer plan grows depth only, but the target changes {', '.join(changed)}")
    if len(slots) != dst_cfg.n_layers:
        raise LaggrowError(f"layer plan: expected one slot per target layer ({dst_cfg.n_layers}), got {len(slots)}")
    bad = [s.source for s in slots if s.source is not None and not 0 <= s.source < src_cfg.n_layers]
    if bad:
        raise LaggrowError(f"layer plan: source layer {bad[0]} does not exist (the source has "
                           f"{src_cfg.n_layers} layers)")


def grow_with_plan(params: Params, src_cfg: ModelConfig, dst_cfg: ModelConfig, slots: Sequence[Slot],
                   key: jax.Array) -> Params:
    """Depth growth given as a plan, one `Slot` per target layer (see growth.depth): what the
    registered depth strategies do, for a plan that none of them names (duplicate block p, for
    any p, as adaptive stacking's candidates do). Pure; new layers are a fresh init from `key`."""
    _check_plan(src_cfg, dst_cfg, slots)
    check_shapes(params, model.param_shapes(src_cfg), "source params (expected the source config's shapes)")
    ctx = Context(jax.random.fold_in(key, 0), {}, moments=False)
    grown = to_jax(apply_plan(to_numpy(params), list(slots), dst_cfg, ctx))
    check_shapes(grown, model.param_shapes(dst_cfg), "layer plan: grown params do not match the target")
    return grown


def grow_opt_state_with_plan(opt_state: Any, src_cfg: ModelConfig, dst_cfg: ModelConfig,
                             slots: Sequence[Slot]) -> Any:
    """AdamW's moments through the plan `grow_with_plan` applied: a copied layer takes its source
    layer's moments, a new layer zeros; counts are kept."""
    _check_plan(src_cfg, dst_cfg, slots)
    ctx_key = jax.random.key(0)  # moments take no randomness from a plan: copies and zeros only
    return _carry_moments(opt_state, src_cfg, dst_cfg, "layer plan",
                          lambda tree: apply_plan(tree, list(slots), dst_cfg, Context(ctx_key, {}, moments=True)))


def grown_state(params: Any, opt_state: Any, src: ModelConfig, dst: ModelConfig, strategy: str, key: jax.Array,
                optimizer_state: str, train_cfg: TrainConfig, **options: Any) -> tuple[Any, Any]:
    """A trained model's params and optimizer state grown by `strategy` into a new model that
    starts training at step 0 (`laggrow grow`, a pool's candidates): the params by `grow`, and the
    optimizer state either carried through the same growth (`carry`: Adam's moments go where their
    units went, the schedule restarts) or fresh (`reset`). Stacking, which stays on one schedule
    over its growths, grows by layer plans instead (stack/growth_choice.py)."""
    grown = grow(params, src, dst, strategy, key, **options)
    if optimizer_state == "carry":
        return grown, train.restart_schedule(grow_opt_state(opt_state, src, dst, strategy, key, **options))
    return grown, train.make_optimizer(train_cfg).init(grown)
