"""Primitive array ops that the growth strategies are made of.

Growth is one-off array surgery on the host, so these ops are numpy: no tracing, no XLA
compilation per shape (on these CPUs every eager jnp op on a new shape costs a compile, and a
growth touches dozens of shapes). `grow` hands back jax arrays at the end.

Depth: every per-layer weight has the layer axis first, so inserting, duplicating or
interleaving layers is a gather along axis 0 (`take_layers` with an index list; the named
helpers build the index). Width: a *unit map* says, for every unit of the grown axis, which
source unit it copies (-1: a new unit). `widen` applies one to one axis, as an output axis
(copies keep their values) or as a fan-in axis (`split=True`: each copy's weights are divided by
its number of copies, so summing over the copies gives back the source weight). New units are
zero; strategies that want them random start from a fresh init and use `pad_into`.

All ops are pure: they return new arrays and never write into their inputs. Broadcasting is
explicit (`along`), in the spirit of jax_numpy_rank_promotion="raise" used by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Depth: the layer axis


def take_layers(x: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """Layers `index[0], index[1], ...` of `x` stacked on axis 0 (copies, duplicates, reorders)."""
    return np.take(x, np.asarray(index, dtype=np.int64), axis=0)


def duplicate_index(n: int, start: int, stop: int) -> list[int]:
    """Layers [start, stop) duplicated, the copy inserted right after the original block."""
    return list(range(stop)) + list(range(start, stop)) + list(range(stop, n))


def interleave_index(n: int, n_target: int) -> list[int]:
    """Each layer repeated in place (f1 f1 f2 f2 ...); for a non-multiple target the repeats
    differ by at most one, the lower layers taking the extra copies."""
    return [j * n // n_target for j in range(n_target)]


def insert_layers(x: np.ndarray, at: int, new: np.ndarray) -> np.ndarray:
    """`new` layers (k, ...) inserted before layer `at` of `x` (n, ...)."""
    return np.concatenate([x[:at], new.astype(x.dtype), x[at:]], axis=0)


def along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 1-D vector reshaped to broadcast along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return np.asarray(v).reshape(shape)


def layer_mask(flags: Sequence[bool], ndim: int) -> np.ndarray:
    """A boolean mask selecting the flagged layers of an array with the layer axis first."""
    return along(np.asarray(flags, dtype=bool), ndim, 0)


# ---------------------------------------------------------------------------------------------
# Width: unit maps


def tiled_units(n_old: int, n_new: int) -> np.ndarray:
    """HyperCloning's map for an integer factor: [0..n-1, 0..n-1, ...]."""
    assert n_new % n_old == 0, (n_old, n_new)
    return np.arange(n_new, dtype=np.int64) % n_old


def padded_units(n_old: int, n_new: int) -> np.ndarray:
    """The source units in place, then `n_new - n_old` new ones (-1)."""
    return np.concatenate([np.arange(n_old), np.full(n_new - n_old, -1)]).astype(np.int64)


def random_units(n_old: int, n_new: int, rng: np.random.Generator) -> np.ndarray:
    """Net2Net's map: the source units in place, then copies of randomly chosen source units."""
    return np.concatenate([np.arange(n_old), rng.integers(0, n_old, n_new - n_old)]).astype(np.int64)


def unit_counts(source: np.ndarray, n_old: int) -> np.ndarray:
    """How many grown units copy each source unit."""
    return np.bincount(source[source >= 0], minlength=n_old).astype(np.float32)


def widen(x: np.ndarray, axis: int, source: np.ndarray, *, split: bool = False) -> np.ndarray:
    """Grow `axis` of `x` by the unit map `source`: unit j copies unit source[j], new units
    (-1) are zero. With `split` every copy is divided by its source's number of copies."""
    source = np.asarray(source)
    out = np.take(x, np.maximum(source, 0), axis=axis)
    factor = (source >= 0).astype(x.dtype)
    if split:
        factor = factor / np.maximum(unit_counts(source, x.shape[axis]), 1.0)[np.maximum(source, 0)]
    if np.all(factor == 1):
        return out
    return out * along(factor.astype(x.dtype), out.ndim, axis)


def zero_sum_noise(rng: np.random.Generator, shape: tuple[int, ...], axis: int, source: np.ndarray,
                   std: float) -> np.ndarray:
    """Gaussian noise whose sum over the copies of every source unit along `axis` is zero.

    Added to a fan-in that was split over copies of an input, it leaves the layer's output on
    cloned inputs unchanged while making the copies' weights differ (HyperCloning's noise)."""
    noise = std * rng.standard_normal(shape, dtype=np.float32)
    n_old = int(source.max()) + 1
    onehot = np.eye(n_old, dtype=np.float32)[source]  # (new, old)
    moved = np.moveaxis(noise, axis, -1)
    group_mean = (moved @ onehot) / unit_counts(source, n_old)
    return np.moveaxis(moved - group_mean @ onehot.T, -1, axis).astype(np.float32)


def pad_into(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A copy of `base` with `x` written into its leading corner (source units keep their
    indices)."""
    out = np.array(base, copy=True)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def relative_noise(rng: np.random.Generator, x: np.ndarray, scale: float, axis: int | None = None) -> np.ndarray:
    """Gaussian noise of standard deviation `scale` times the RMS of `x` (per slice of `axis`
    when given, e.g. per layer), so one `scale` suits weights of any magnitude."""
    if axis is None:
        rms = np.sqrt(np.mean(np.square(x)))
    else:
        others = tuple(a for a in range(x.ndim) if a != axis)
        rms = along(np.sqrt(np.mean(np.square(x), axis=others)), x.ndim, axis)
    return (scale * rms * rng.standard_normal(x.shape, dtype=np.float32)).astype(x.dtype)
