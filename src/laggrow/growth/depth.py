"""Depth strategies: L layers -> L' > L layers, for any L' (multiples or not).

Every copying strategy is a *plan*: one `Slot` per target layer saying which source layer it
copies (or that it is new), whether it is an added copy, and whether its output projections are
zeroed (an identity layer) or noise is added. `apply_plan` turns a plan into params with one
gather along the layer axis, so the strategies differ only in their plans, and the tests can
check every slot against its plan.

Why zeroed output projections preserve the function: a pre-norm block computes
x + W_out(attn(LN(x))) + W_out'(mlp(LN(..))); with both W_out zero it returns x exactly. The
projections are named per architecture (`layout.OUTPUT_PROJECTIONS`: gpt's attn/w_out and
mlp/w_out, llama's o_proj and down_proj, attn/w_o and mlp/w_down, as LLaMA Pro zeroes them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from laggrow.config import ModelConfig
from laggrow.growth import ops
from laggrow.growth.layout import OUTPUT_PROJECTIONS, flatten, unflatten
from laggrow.growth.registry import BLOCK_OPTION, Context, Option, non_negative_float, register

GAS = "Reddi et al. 2023, Efficient Training of LMs using Few-Shot Learning (ICML)"
MIDAS = "Saunshi et al. 2024, On the Inductive Bias of Stacking Towards Improving Reasoning (MIDAS)"
LLAMA_PRO = "Wu et al. 2024, LLaMA Pro: Progressive LLaMA with Block Expansion"


@dataclass(frozen=True)
class Slot:
    """One target layer: `source` is the source layer it copies (None: a freshly initialised
    layer); `copy` marks a layer added by the growth, as opposed to a source layer kept."""

    source: int | None
    copy: bool = False
    zero_out: bool = False  # attention and MLP output projections zero: the layer is the identity
    noise: bool = False  # seeded relative noise added (params only, never to moments)


def originals(n: int) -> list[Slot]:
    return [Slot(i) for i in range(n)]


def staged(n: int, n_target: int, block: int | None, start_of: Callable[[int, int], int]) -> list[Slot]:
    """Duplicate a block of `block` layers (default: the whole growth, at most n) and insert the
    copy right after the original, in stages until the target depth, as gradual stacking and
    MIDAS do. `start_of(n_current, b)` picks the block; the last stage may copy fewer layers."""
    block = block or max(1, min(n_target - n, n))
    slots = originals(n)
    while len(slots) < n_target:
        b = min(block, n_target - len(slots), len(slots))
        s = start_of(len(slots), b)
        slots[s + b:s + b] = [dataclasses.replace(slot, copy=True) for slot in slots[s:s + b]]
    return slots


def middle_block_start(n: int, b: int) -> int:
    """MIDAS: split n layers into blocks of b from the bottom; the middle block is block
    ceil(n_blocks / 2), counting from 1 (the lower of the two middles for an even count)."""
    n_blocks = -(-n // b)
    return (-(-n_blocks // 2) - 1) * b


def plan_stack(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return originals(n) + [Slot(j % n, copy=True) for j in range(n, n_target)]


def plan_stack_top(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return staged(n, n_target, options.get("block"), lambda cur, b: cur - b)


def plan_stack_middle(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return staged(n, n_target, options.get("block"), middle_block_start)


def plan_stack_bottom(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return staged(n, n_target, options.get("block"), lambda cur, b: 0)


def plan_interleave(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    index = ops.interleave_index(n, n_target)
    return [Slot(i, copy=j > 0 and index[j - 1] == i) for j, i in enumerate(index)]


def plan_random_top(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return originals(n) + [Slot(None, copy=True) for _ in range(n, n_target)]


def plan_zero_top(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return originals(n) + [Slot(None, copy=True, zero_out=True) for _ in range(n, n_target)]


def plan_copy_zero(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return [dataclasses.replace(s, zero_out=s.copy) for s in plan_stack_middle(n, n_target, options)]


def plan_stack_noise(n: int, n_target: int, options: Mapping[str, Any]) -> list[Slot]:
    return [dataclasses.replace(s, noise=s.copy) for s in plan_stack(n, n_target, options)]


def apply_plan(params: dict, slots: list[Slot], dst: ModelConfig, ctx: Context) -> dict:
    """The params of `dst` whose layer j is made as `slots[j]` says; non-layer params kept."""
    index = [0 if s.source is None else s.source for s in slots]
    new = [s.source is None for s in slots]
    zero = [s.zero_out for s in slots]
    noisy = [s.noise for s in slots]
    scale = ctx.options.get("noise", 0.0)
    fresh = flatten(ctx.fresh(dst)["blocks"]) if any(new) else {}
    out = {}
    for path, x in flatten(params["blocks"]).items():
        full = f"blocks/{path}"
        y = ops.take_layers(x, index)
        if any(new):
            y = np.where(ops.layer_mask(new, y.ndim), fresh[path], y)
        if any(zero) and full in OUTPUT_PROJECTIONS:
            y = np.where(ops.layer_mask(zero, y.ndim), np.zeros_like(y), y)
        if any(noisy) and scale > 0 and not ctx.moments:
            noise = ops.relative_noise(ctx.rng(f"noise/{full}"), y, scale, axis=0)
            y = y + noise * ops.layer_mask(noisy, y.ndim)
        out[path] = y.astype(x.dtype)
    grown = flatten({k: v for k, v in params.items() if k != "blocks"})
    grown.update({f"blocks/{p}": v for p, v in out.items()})
    return unflatten(grown)  # fresh dicts: no part of the input tree is shared


def _from_plan(plan: Callable[..., list[Slot]]):
    def grow_depth(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
        return apply_plan(params, plan(src.n_layers, dst.n_layers, ctx.options), dst, ctx)

    grow_depth.__name__ = plan.__name__.replace("plan_", "grow_")
    return grow_depth


def register_plan(name: str, plan: Callable[..., list[Slot]], **meta: Any) -> None:
    """Register a depth strategy made by its plan (recipes.py registers its own this way)."""
    register(name, kind="depth", plan=plan, **meta)(_from_plan(plan))


register_plan(
    "stack", plan_stack, function_preserving=False,
    definition="StackBERT: the whole stack copied on top, cyclically (layer i to slot i + L)",
    reference="Gong et al. 2019, Efficient Training of BERT by Progressively Stacking (ICML)")
register_plan(
    "stack_top", plan_stack_top, function_preserving=False, options={"block": BLOCK_OPTION},
    definition="gradual stacking: the top L'-L layers copied on top (in stages of `block` layers "
               "when L'-L > L)",
    reference=GAS)
register_plan(
    "stack_middle", plan_stack_middle, function_preserving=False, options={"block": BLOCK_OPTION},
    definition="MIDAS: the middle block of `block` layers (default L'-L) duplicated, the copy "
               "inserted right after it; repeated until L'",
    reference=MIDAS)
register_plan(
    "stack_bottom", plan_stack_bottom, function_preserving=False, options={"block": BLOCK_OPTION},
    definition="the bottom block of `block` layers (default L'-L) duplicated in place",
    reference=f"block-position variant of {MIDAS.split(',')[0]}")
register_plan(
    "interleave", plan_interleave, function_preserving=False,
    definition="each layer duplicated in place (f1 f1 f2 f2 ...); for non-multiples the lower "
               "layers take the extra copies",
    reference="Wang et al. 2023, LiGO (ICLR), interlace; Wu et al. 2024, LLaMA Pro")
register_plan(
    "random_top", plan_random_top, function_preserving=False,
    definition="new freshly initialised layers on top",
    reference="baseline of " + GAS.split(",")[0])
register_plan(
    "zero_top", plan_zero_top, function_preserving=True,
    definition="new identity layers on top: fresh layers whose attention and MLP output "
               "projections are zero",
    reference="Shen et al. 2022, Staged Training for Transformer LMs (ICML)")
register_plan(
    "copy_zero", plan_copy_zero, function_preserving=True, options={"block": BLOCK_OPTION},
    definition="copies placed as stack_middle places them (one block of copies, each right after the "
               "block it copies), with their output projections zero; block_expansion spreads them "
               "instead, one after each group",
    reference=f"the identity copies of {LLAMA_PRO}, placed as MIDAS")
register_plan(
    "stack_noise", plan_stack_noise, function_preserving=False,
    options={"noise": Option(0.01, non_negative_float, "relative std of the noise on the copies")},
    definition="stack, plus seeded Gaussian noise of relative std `noise` (default 0.01, per "
               "layer and weight) on the copies",
    reference="Chen et al. 2016, Net2Net (ICLR), noise to break symmetry")


@register("scratch", kind="depth", function_preserving=False,
          definition="a fresh random init of the target, ignoring the source (the baseline; "
                     "any target shape)",
          reference="the baseline of every growth paper", any_target=True)
def grow_scratch(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
    return unflatten(flatten(ctx.fresh(dst)))
