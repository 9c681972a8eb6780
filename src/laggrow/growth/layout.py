"""What each axis of each parameter means, and path-addressed helpers over params trees.

Width growth has to know, for every weight, which axes are d_model (D), heads (H, K) and d_ff (F),
and whether the axis is an *output* of the weight (its units are copied as they are) or an
*input* (the weight's fan-in: when input units are duplicated, their weights are divided so the
sum over the copies stays the same). `AXES` says that once, for the layout in model.py's
docstring; a test checks that it covers `param_shapes` exactly, so the two cannot drift.

Axis names: "L" layers, "V" vocabulary, "S" positions, "3" q/k/v, "Dh" head_dim (never grown);
"D", "H", "F", "K" grown outputs; "D<", "H<", "F<" grown inputs (fan-in). "K" is llama's
key/value heads: width growth keeps the query heads per KV head, so K grows with H, in whole
groups (`growth.transform.check_target`).

The two architectures (model.py's docstring) share the embedding and head, and none of their
other paths: one table holds both, and a tree holds the paths of its own architecture only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from laggrow.errors import LaggrowError

AXES: dict[str, tuple[str, ...]] = {
    "embed/tokens": ("V", "D"),
    "pos/embedding": ("S", "D"),
    # gpt
    "blocks/ln1/scale": ("L", "D"),
    "blocks/ln1/bias": ("L", "D"),
    "blocks/attn/w_qkv": ("L", "D<", "3", "H", "Dh"),
    "blocks/attn/w_out": ("L", "H<", "Dh", "D"),
    "blocks/ln2/scale": ("L", "D"),
    "blocks/ln2/bias": ("L", "D"),
    "blocks/mlp/w_in": ("L", "D<", "F"),
    "blocks/mlp/w_out": ("L", "F<", "D"),
    "ln_f/scale": ("D",),
    "ln_f/bias": ("D",),
    # llama
    "blocks/norm1/scale": ("L", "D"),
    "blocks/attn/w_q": ("L", "D<", "H", "Dh"),
    "blocks/attn/w_k": ("L", "D<", "K", "Dh"),
    "blocks/attn/w_v": ("L", "D<", "K", "Dh"),
    "blocks/attn/b_q": ("L", "H", "Dh"),
    "blocks/attn/b_k": ("L", "K", "Dh"),
    "blocks/attn/b_v": ("L", "K", "Dh"),
    "blocks/attn/w_o": ("L", "H<", "Dh", "D"),
    "blocks/norm2/scale": ("L", "D"),
    "blocks/mlp/w_gate": ("L", "D<", "F"),
    "blocks/mlp/w_up": ("L", "D<", "F"),
    "blocks/mlp/w_down": ("L", "F<", "D"),
    "norm_f/scale": ("D",),
    "head/w": ("D<", "V"),
}

GROWN_DIMS = ("D", "H", "F", "K")

# Output projections (what writes into the residual stream): zeroing them turns a pre-norm
# residual block into the identity, LayerNorm or RMSNorm alike (llama: o_proj and down_proj).
OUTPUT_PROJECTIONS = ("blocks/attn/w_out", "blocks/mlp/w_out", "blocks/attn/w_o", "blocks/mlp/w_down")

# Input projections (what reads the normed stream into heads or d_ff units).
INPUT_PROJECTIONS = ("blocks/attn/w_qkv", "blocks/mlp/w_in", "blocks/attn/w_q", "blocks/attn/w_k",
                     "blocks/attn/w_v", "blocks/mlp/w_gate", "blocks/mlp/w_up")

NORM_SCALES = ("blocks/ln1/scale", "blocks/ln2/scale", "ln_f/scale",
               "blocks/norm1/scale", "blocks/norm2/scale", "norm_f/scale")

# The final norm's parameters, which scale the logits (a tied embedding's width growth divides them).
FINAL_NORM = ("ln_f/scale", "ln_f/bias", "norm_f/scale")


def grown_axes(path: str) -> list[tuple[int, str, bool]]:
    """(axis, dim, is_fan_in) for every axis of `path` that width growth changes."""
    out = []
    for axis, name in enumerate(AXES[path]):
        dim = name.rstrip("<")
        if dim in GROWN_DIMS:
            out.append((axis, dim, name.endswith("<")))
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"blocks/attn/w_out": leaf, ...} from a nested dict."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The nested dict of `flatten`'s output; always fresh dicts, so no input is ever aliased."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        *parents, last = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def items(tree: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    return iter(flatten(tree).items())


def _describe(leaf: Any) -> str:
    shape = tuple(getattr(leaf, "shape", ()))
    dtype = getattr(leaf, "dtype", type(leaf).__name__)
    return f"{shape} {dtype}"


def shape_diff(tree: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Readable differences between a params tree and an expected tree of shapes and dtypes."""
    got, want = flatten(tree), flatten(expected)
    problems = [f"missing {p}" for p in want if p not in got]
    problems += [f"extra {p}" for p in got if p not in want]
    for path in want:
        if path not in got:
            continue
        leaf, spec = got[path], want[path]
        same_shape = tuple(getattr(leaf, "shape", ())) == tuple(spec.shape)
        same_dtype = np.dtype(getattr(leaf, "dtype", None) or np.float64) == np.dtype(spec.dtype)
        if not (same_shape and same_dtype):
            problems.append(f"mismatched {path}: {_describe(leaf)}, expected {_describe(spec)}")
    return problems


def check_shapes(tree: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
    """Raise a one-line LaggrowError listing missing, extra and mismatched paths."""
    if not isinstance(tree, Mapping):
        raise LaggrowError(f"{what}: expected a nested dict of arrays, got {type(tree).__name__}")
    problems = shape_diff(tree, expected)
    if problems:
        raise LaggrowError(f"{what}: " + "; ".join(problems))


def to_numpy(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A new nested dict of host numpy copies: growth works on the host (see ops.py), and a
    copy means nothing done to the result can ever reach the caller's arrays."""
    return unflatten({p: np.array(x, copy=True) for p, x in flatten(tree).items()})


def to_jax(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A new nested dict of jax arrays, as the rest of laggrow expects params."""
    return unflatten({p: jnp.asarray(x) for p, x in flatten(tree).items()})
