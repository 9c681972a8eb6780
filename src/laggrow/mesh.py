"""Where arrays live: a `jax.sharding.Mesh` with a candidate axis and a data axis.

    axis `candidates`   a pool's stacked candidate axis: each device trains its share of the pool
    axis `data`         every batch is split over it (data parallelism); with `fsdp`, parameters
                        and optimizer state are split over it too, for a model one device cannot hold

| array                         | no fsdp                         | fsdp                                     |
|-------------------------------|---------------------------------|------------------------------------------|
| pool state (N, ...)           | P('candidates')                 | P('candidates', ..., 'data' on one dim)  |
| single run state (...)        | replicated                      | P(..., 'data' on one dim)                |
| pool batches (N, B, T+1)      | P('candidates', 'data')         | the same                                 |
| run batches (B, T+1)          | P('data')                       | the same                                 |
| held-out batches (n, B, T+1)  | P(None, 'data'), or whole when  | the same                                 |
|                               | `data` does not divide B        |                                          |
| losses, metrics               | replicated (every process reads them) |                                    |

FSDP splits each leaf on its largest dimension that the data axis divides (the same rule for a
parameter and its AdamW moments, so they line up); a leaf no dimension of which divides stays
replicated. XLA inserts the all-gathers and reduce-scatters; the step's code is the same on every
layout. A layout is `Layout(candidates, data, fsdp)`, resolved from the config's `mesh` section
(config.MeshConfig) by `resolve`; the 1-device layout keeps the original single-device path
(arrays committed to `jax.local_devices()[0]`), which is what every other layout is checked against.

Results do not depend on the layout beyond float rounding: vmap shares no arithmetic across
candidates, a batch split over `data` is reduced in a different order only, and dropout's key is
a function of (seed, step) drawn with JAX's partitionable threefry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from laggrow.config import AUTO, MeshConfig
from laggrow.errors import LaggrowError

CANDIDATES, DATA = "candidates", "data"


@dataclass(frozen=True)
class Layout:
    """How many devices on each axis, and whether the state is split over `data` (hashable: the
    compiled steps are cached per layout)."""

    candidates: int = 1
    data: int = 1
    fsdp: bool = False

    @property
    def devices(self) -> int:
        return self.candidates * self.data

    @property
    def single(self) -> bool:
        """One device: the original path, nothing sharded."""
        return self.devices == 1

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "data": self.data, "fsdp": self.fsdp}

    def record(self) -> dict[str, Any]:
        """Where a command ran, as summary.json, pool.json and final.json keep it: the layout,
        the devices it used and had, their platform and the processes."""
        return {**self.to_dict(), "devices": self.devices, "devices_present": jax.device_count(),
                "platform": jax.devices()[0].platform, "processes": jax.process_count()}


SINGLE = Layout()


def _divisors_up_to(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def resolve(cfg: MeshConfig, n_devices: int, batch_size: int, n_candidates: int | None = None) -> Layout:
    """The layout `cfg` asks for on `n_devices` devices, for batches of `batch_size` and a pool of
    `n_candidates` trained together (None: a single run, which has no candidate axis).

    `auto` (the default) puts devices on the candidate axis first (no communication: each device
    trains whole candidates), at most one per candidate, and the rest on the data axis, as many as
    divide the batch. An impossible layout is one line naming the key."""
    if n_candidates is None and cfg.candidates not in (AUTO, 1):
        raise LaggrowError(f"mesh.candidates: {cfg.candidates} for a single training run (expected 1 or "
                           "auto: only a pool has candidates to spread)")
    if n_candidates is None:
        c = 1
    elif cfg.candidates != AUTO:
        c = cfg.candidates
    elif cfg.data != AUTO:
        c = max(1, min(n_candidates, n_devices // cfg.data))
    else:
        c = max(1, min(n_candidates, n_devices))
    if cfg.data != AUTO:
        d = cfg.data
    else:
        d = max(_divisors_up_to(batch_size, max(1, n_devices // c)))
    if c * d > n_devices:
        raise LaggrowError(f"mesh: candidates {c} x data {d} = {c * d} devices, but {n_devices} "
                           f"{'is' if n_devices == 1 else 'are'} present (expected at most {n_devices} in all)")
    if batch_size % d:
        raise LaggrowError(f"mesh.data: {d} does not divide train.batch_size {batch_size} (expected a divisor "
                           f"of the batch: {', '.join(map(str, _divisors_up_to(batch_size, n_devices)))})")
    return Layout(c, d, bool(cfg.fsdp) and d > 1)


def padded_size(together: int, layout: Layout) -> int:
    """Candidates trained together, padded up to a multiple of the candidate axis (the padding
    trains copies of a real candidate, and is dropped)."""
    c = layout.candidates
    return -(-together // c) * c


@functools.lru_cache(maxsize=16)
def make_mesh(layout: Layout) -> Mesh:
    """The (candidates, data) mesh over the first `layout.devices` devices (all processes')."""
    devices = jax.devices()
    if layout.devices > len(devices):  # resolve() refuses this; a bug if it gets here
        raise LaggrowError(f"mesh: {layout.devices} devices asked, {len(devices)} present")
    grid = np.array(devices[: layout.devices]).reshape(layout.candidates, layout.data)
    return Mesh(grid, (CANDIDATES, DATA))


def _fsdp_dim(shape: tuple[int, ...], data: int) -> int | None:
    """The dimension FSDP splits: the largest the data axis divides (the first of equals)."""
    best = None
    for i, size in enumerate(shape):
        if size % data == 0 and size >= data and (best is None or size > shape[best]):
            best = i
    return best


def leaf_spec(shape: tuple[int, ...], layout: Layout, stacked: bool) -> P:
    """The PartitionSpec of one state leaf of `shape` (leading candidate axis when `stacked`). A
    pool whose size the candidate axis does not divide (a whole pool restored for train-final,
    before it is cut into padded chunks) is held whole on every device of the axis."""
    lead = ((CANDIDATES if shape[0] % layout.candidates == 0 else None),) if stacked else ()
    rest = shape[1:] if stacked else shape
    if not layout.fsdp:
        return P(*lead)
    dim = _fsdp_dim(tuple(rest), layout.data)
    if dim is None:
        return P(*lead)
    return P(*lead, *([None] * dim), DATA)


def state_shardings(tree: Any, layout: Layout, stacked: bool) -> Any:
    """NamedShardings for every leaf of a train state (arrays, tracers or ShapeDtypeStructs)."""
    mesh = make_mesh(layout)
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), layout, stacked)), tree)


def batch_sharding(layout: Layout, stacked: bool) -> NamedSharding:
    """Training batches: (N, B, T+1) for a pool (`stacked`), (B, T+1) for one run."""
    spec = P(CANDIDATES, DATA) if stacked else P(DATA)
    return NamedSharding(make_mesh(layout), spec)


def eval_sharding(layout: Layout, batch_size: int) -> NamedSharding:
    """Held-out batches (n, B, T+1), the same for every candidate: split over `data` when it
    divides the held-out batch size (data.eval_batch_size, which need not be the training
    batch's), else held whole by every device."""
    return NamedSharding(make_mesh(layout), P(None, DATA) if batch_size % layout.data == 0 else P())


def replicated(layout: Layout) -> NamedSharding:
    return NamedSharding(make_mesh(layout), P())


def place(tree: Any, shardings: Any) -> Any:
    """Put every leaf where `shardings` says. Host arrays must be the same on every process (they
    are: batches and grown states are pure functions of the config); each process then keeps
    only its own devices' pieces."""
    return jax.tree.map(_put, tree, shardings)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and jax.process_count() > 1 and not sharding.is_fully_addressable:
        if x.is_fully_addressable:  # on this process's devices: the same value on every process
            x = np.asarray(x)
        elif x.sharding != sharding:  # a global array: resharded by a program every process runs
            return _reshard(sharding)(x)
        else:
            return x
    return jax.device_put(x, sharding)


@functools.lru_cache(maxsize=64)
def _reshard(sharding: NamedSharding) -> Callable:
    """The identity, jitted once per target sharding (a fresh lambda each call would compile
    again every time)."""
    return jax.jit(lambda a: a, out_shardings=sharding)


def place_state(state: Any, layout: Layout, stacked: bool) -> Any:
    """A train state on `layout`; on the single layout, committed to the default device as
    before (jit keys its cache on committedness: a resumed run shares its compilation)."""
    if layout.single:
        return jax.device_put(state, jax.local_devices()[0])
    return place(state, state_shardings(state, layout, stacked))


def place_batch(batch: np.ndarray, layout: Layout, stacked: bool) -> jax.Array:
    if layout.single:
        return jax.numpy.asarray(batch)
    return _put(batch, batch_sharding(layout, stacked))


def place_eval(batches: np.ndarray, layout: Layout) -> jax.Array:
    if layout.single:
        return jax.numpy.asarray(batches)
    return _put(batches, eval_sharding(layout, batches.shape[1]))


def abstract_state(abstract: Any, layout: Layout, stacked: bool) -> Any:
    """ShapeDtypeStructs of a state with the shardings to restore it onto: what Orbax needs to
    read a checkpoint written on any layout onto this one."""
    if layout.single:
        one = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, abstract)
    else:
        shardings = state_shardings(abstract, layout, stacked)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def global_arrays(tree: Any) -> Any:
    """With several processes, every leaf held by this process alone (a pool put back together
    on the host) made a global array replicated over all devices, as Orbax saves only those.
    One process: the tree as it is."""
    if jax.process_count() == 1:
        return tree
    everywhere = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), P())
    return jax.tree.map(lambda x: _put(x, everywhere) if isinstance(x, jax.Array) and x.is_fully_addressable
                        else x, tree)


def to_host(tree: Any) -> Any:
    """numpy copies of every leaf, whichever processes hold its pieces (every process gets all)."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def sharded_step(step_fn: Callable, layout: Layout, stacked: bool) -> Callable:
    """`step_fn(state, batch) -> (state, metrics)` jitted for `layout`, the state donated: the new
    state keeps the old one's shardings (so the next call reuses the compilation) and the metrics
    are replicated (every process can read them)."""
    if layout.single:
        return jax.jit(step_fn, donate_argnums=0)
    everywhere = replicated(layout)

    def constrained(state, batch):
        new, metrics = step_fn(state, batch)
        new = jax.lax.with_sharding_constraint(new, state_shardings(new, layout, stacked))
        return new, jax.lax.with_sharding_constraint(metrics, everywhere)

    return jax.jit(constrained, donate_argnums=0)


def replicated_result(fn: Callable, layout: Layout) -> Callable:
    """`fn` jitted with its result replicated (held-out losses every process reads)."""
    if layout.single:
        return jax.jit(fn)
    return jax.jit(fn, out_shardings=replicated(layout))
