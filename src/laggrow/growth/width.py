"""Width strategies: grow d_model (D), n_heads (H) and d_ff (F) at a fixed depth.

head_dim is always kept: RoPE rotates pairs within a head and attention scales by
1/sqrt(head_dim), so only cloning whole heads of the same size is exact. Hence n_heads grows with
d_model: H' = D' / head_dim. What each strategy supports:

| strategy     | d_model (and n_heads)        | d_ff                  | exact |
|--------------|------------------------------|-----------------------|-------|
| hypercloning | integer multiples            | integer multiples     | yes   |
| net2net      | integer multiples            | any size >= d_ff      | yes   |
| zero_pad     | any multiple of head_dim     | any size >= d_ff      | only if d_model is kept |
| random_pad   | any multiple of head_dim     | any size >= d_ff      | no    |
| fusion       | exactly 2x                   | exactly 2x            | self-fusion only |

Why d_model needs an integer factor to be exact: the residual stream x becomes [x, x, ..., x];
LayerNorm's mean and variance over a tiled vector equal the original's, and so does RMSNorm's
root mean square, so every norm's output is tiled too. Padding x with new coordinates (zero or
not) changes those statistics. A tied embedding is used twice: tiled at the input, it would
multiply the logits by the factor, so the final norm's scale (and bias) are divided by it instead
(an untied head's fan-in is split like any other).

llama's grouped-query attention: query head j reads key/value head j // G (G = n_heads /
n_kv_heads), and growth keeps G, so heads grow in whole KV groups. A unit map on the KV heads
(K) decides the query heads' map (`head_maps`): query head j copies head G * K[j // G] + j % G,
so a cloned query head reads a clone of the KV head its source read. For gpt (G = 1) that is
the head map it always was. SwiGLU's gate and up are outputs over d_ff and down its fan-in:
silu(g) * u of a cloned unit is the source's, so splitting down's fan-in is exact.
"""

from __future__ import annotations

import numpy as np

from laggrow.config import ModelConfig
from laggrow.errors import LaggrowError
from laggrow.growth import ops
from laggrow.growth.layout import FINAL_NORM, INPUT_PROJECTIONS, NORM_SCALES, flatten, grown_axes, unflatten
from laggrow.growth.registry import NOISE_OPTION, PARTNER_OPTION, Context, register

SIZES = {"D": "d_model", "H": "n_heads", "F": "d_ff", "K": "kv_heads"}


def sizes(cfg: ModelConfig) -> dict[str, int]:
    return {dim: getattr(cfg, name) for dim, name in SIZES.items()}


def _multiples(n: int) -> str:
    return ", ".join(str(n * k) for k in range(2, 5)) + ", ..."


def require_factor(name: str, dims: str, exact: int | None = None):
    """A check: a one-line error unless each of `dims` grows by an integer factor (`exact`)."""

    def check(src: ModelConfig, dst: ModelConfig) -> None:
        _require_factor(name, src, dst, dims, exact)

    return check


def _require_factor(name: str, src: ModelConfig, dst: ModelConfig, dims: str, exact: int | None) -> None:
    for dim in dims:
        old, new = sizes(src)[dim], sizes(dst)[dim]
        ok = new % old == 0 and (exact is None or new == exact * old)
        if not ok:
            label = SIZES[dim]
            possible = str(exact * old) if exact else f"{old} (unchanged), {_multiples(old)}"
            also = " (n_heads follows: d_model / head_dim)" if dim == "D" else ""
            raise LaggrowError(f"strategy {name}: cannot grow {label} {old} -> {new}; "
                               f"possible {label}: {possible}{also}")


def _tied_output_scale(out: dict, dst: ModelConfig, factor: int, ctx: Context) -> None:
    """A tiled tied embedding multiplies the logits by `factor`: divide the final norm."""
    if dst.tie_embeddings and ctx.split and factor != 1:
        for path in FINAL_NORM:
            if path in out:
                out[path] = out[path] / factor


def head_maps(src: ModelConfig, dst: ModelConfig, kv_map: np.ndarray) -> dict[str, np.ndarray]:
    """The unit maps of the query heads (H) and the KV heads (K) from one map of the KV heads:
    query head j of the target copies head G * kv_map[j // G] + j % G of the source (-1 where
    its group is new), G the query heads per KV head, which growth keeps."""
    g = src.n_heads // src.kv_heads
    j = np.arange(dst.n_heads)
    group = kv_map[j // g]
    return {"K": kv_map, "H": np.where(group >= 0, g * group + j % g, -1).astype(np.int64)}


def clone_units(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context,
                maps: dict[str, np.ndarray]) -> dict:
    """Widen every grown axis by its unit map: outputs copied, fan-ins split over the copies.
    Exact when the D map is a uniform tiling (see the module docstring); H and F maps may be any."""
    noise = ctx.options.get("noise", 0.0)
    out = {}
    for path, x in flatten(params).items():
        y = x
        for axis, dim, fan_in in grown_axes(path):
            y = ops.widen(y, axis, maps[dim], split=fan_in and ctx.split)
        if noise > 0 and not ctx.moments:
            rms = float(np.sqrt(np.mean(np.square(x))))
            for axis, dim, fan_in in grown_axes(path):
                if fan_in:  # noise summing to zero over the copies keeps the function
                    y = y + ops.zero_sum_noise(ctx.rng(f"noise/{path}"), y.shape, axis, maps[dim], noise * rms)
        out[path] = y
    _tied_output_scale(out, dst, dst.d_model // src.d_model, ctx)
    return unflatten(out)


@register("hypercloning", kind="width", function_preserving=True, options={"noise": NOISE_OPTION},
          check=require_factor("hypercloning", "DF"),
          definition="symmetric tiling: every unit cloned, fan-ins divided by the factor "
                     "([[W/2, W/2], [W/2, W/2]]); optional `noise` summing to zero over the clones "
                     "(still exact); integer factors",
          reference="Samragh et al. 2024, Scaling Smart: Accelerating LLM Pre-training with "
                    "Small Model Initialization (HyperCloning)")
def grow_hypercloning(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
    maps = {dim: ops.tiled_units(sizes(src)[dim], sizes(dst)[dim]) for dim in SIZES}
    return clone_units(params, src, dst, ctx, maps)


@register("net2net", kind="width", function_preserving=True, check=require_factor("net2net", "D"),
          definition="units duplicated (extra heads and d_ff units copy randomly chosen ones) and "
                     "their fan-out divided by the number of copies; integer d_model factors, any d_ff",
          reference="Chen et al. 2016, Net2Net (ICLR); Chen et al. 2022, bert2BERT (ACL)")
def grow_net2net(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
    # The maps are structure, so moments need them too: derive them from the key in both modes.
    # Heads are drawn in whole KV groups (for gpt, one head a group: the draw it always was).
    maps = {"D": ops.tiled_units(src.d_model, dst.d_model),
            "F": ops.random_units(src.d_ff, dst.d_ff, ctx.rng("units/F"))}
    maps.update(head_maps(src, dst, ops.random_units(src.kv_heads, dst.kv_heads, ctx.rng("units/H"))))
    return clone_units(params, src, dst, ctx, maps)


def _region(x_shape: tuple[int, ...], path: str, src: ModelConfig) -> np.ndarray:
    """1 except where a *new* input coordinate feeds an *old* output unit (zero_pad zeroes that)."""
    old = sizes(src)
    mask = np.ones((1,) * len(x_shape), np.float32)
    new_in = old_out = None
    for axis, dim, fan_in in grown_axes(path):
        idx = np.arange(x_shape[axis])
        if fan_in:
            new_in = ops.along((idx >= old[dim]).astype(np.float32), len(x_shape), axis)
        else:
            old_out = ops.along((idx < old[dim]).astype(np.float32), len(x_shape), axis)
    if new_in is not None and old_out is not None:
        mask = 1.0 - new_in * old_out
    return mask


@register("zero_pad", kind="width", function_preserving=False,
          definition="new units zero where they would reach old ones; the fan-in of new heads and "
                     "d_ff units freshly initialised; exact only when d_model is kept (LayerNorm "
                     "statistics change over a padded d_model); any sizes",
          reference="Yao et al. 2024, Masked Structural Growth (ICLR), without its masks")
def grow_zero_pad(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
    fresh = flatten(ctx.fresh(dst))
    out = {}
    for path, x in flatten(params).items():
        if path in NORM_SCALES:
            base = fresh[path]  # ones, as a norm starts
        elif path in INPUT_PROJECTIONS:
            base = fresh[path] * _region(fresh[path].shape, path, src)
        else:
            base = np.zeros_like(fresh[path])
        out[path] = ops.pad_into(base, x)
    return unflatten(out)


@register("random_pad", kind="width", function_preserving=False,
          definition="the source in place, every new unit freshly initialised; any sizes",
          reference="the random-init baseline of Chen et al. 2016, Net2Net (ICLR)")
def grow_random_pad(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
    fresh = flatten(ctx.fresh(dst))
    return unflatten({path: ops.pad_into(fresh[path], x) for path, x in flatten(params).items()})


def _block_diagonal(x1: np.ndarray, x2: np.ndarray, path: str) -> np.ndarray:
    axes = [axis for axis, _, _ in grown_axes(path)]
    shape = tuple(2 * n if a in axes else n for a, n in enumerate(x1.shape))
    first = tuple(slice(0, n) for n in x1.shape)
    second = tuple(slice(n, 2 * n) if a in axes else slice(None) for a, n in enumerate(x1.shape))
    out = np.zeros(shape, x1.dtype)
    out[first] = x1
    out[second] = x2
    return out


@register("fusion", kind="width", function_preserving=True, options={"partner": PARTNER_OPTION},
          check=require_factor("fusion", "DF", exact=2),
          preserving_note="self-fusion; not with another `partner`",
          preserving_if=lambda options: options.get("partner") is None,
          definition="Deep Fusion: block-diagonal merge with a second model of the same shape "
                     "(default a copy of itself), heads and d_ff units concatenated, logits "
                     "averaged; exactly 2x width",
          reference="Mazzawi et al. 2023, Deep Fusion: Efficient Network Training via "
                    "Pre-trained Initializations")
def grow_fusion(params: dict, src: ModelConfig, dst: ModelConfig, ctx: Context) -> dict:
    partner = ctx.options.get("partner")
    first = flatten(params)
    if partner is None:
        second = first
    elif ctx.moments:  # the partner's optimizer state is not ours to carry: its units start at zero
        second = {p: np.zeros_like(x) for p, x in first.items()}
    else:
        second = flatten(partner)
    out = {path: _block_diagonal(x, np.asarray(second[path]), path) for path, x in first.items()}
    if ctx.split:  # average the two models' logits
        if dst.tie_embeddings:
            _tied_output_scale(out, dst, 2, ctx)
        else:
            out["head/w"] = out["head/w"] / 2
    return unflatten(out)
