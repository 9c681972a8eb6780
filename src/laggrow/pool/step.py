"""Training a pool of candidates in one compiled, vmapped program.

The candidates' train states (params, optimizer state, step) are stacked on a leading candidate
axis and advanced by `jax.vmap` of the very same `train.make_train_step` a single run uses, so a
candidate trained in a pool follows the same arithmetic as one trained alone. Two pieces of
bookkeeping ride in the stacked state: `lr_scale` (a per-candidate learning-rate multiplier) and
`diverged_at` (-1 while healthy). A candidate whose loss or gradient becomes NaN or infinite, or
whose update would make its parameters so, is frozen at its last finite state and marked; vmap
shares no arithmetic across candidates, so the others go on exactly as before.

A pool too large for memory is trained in chunks of `chunk_size` candidates, each chunk padded to
the same size so the program still compiles once. `chunk_size: auto` takes the most candidates the
device's memory holds by resources.py's estimate (`chunk_for`): all of them when they fit, so such
a pool trains exactly as with chunk_size 0.

On a device mesh (laggrow.mesh) the stacked candidate axis is split over the mesh's `candidates`
axis and every batch over `data`; a chunk is padded up to a multiple of the candidate axis.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from laggrow import mesh, resources, train
from laggrow.config import ModelConfig, RunConfig, TrainConfig
from laggrow.mesh import SINGLE, Layout
from laggrow.pool.spec import AUTO

State = dict


def make_guarded_step(model_cfg: ModelConfig, train_cfg: TrainConfig) -> Callable:
    """One candidate's step with divergence isolation: a non-finite loss or gradient, or an
    update that makes the parameters non-finite (a finite gradient times a huge learning rate),
    keeps the previous state and records the step at which it happened."""
    step_fn = train.make_train_step(model_cfg, train_cfg)

    def guarded(state: State, batch: jax.Array) -> tuple[State, dict]:
        new, metrics = step_fn(state, batch)
        healthy = state["diverged_at"] < 0
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & train.all_finite(new["params"])
        keep = healthy & finite
        new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state)
        new["diverged_at"] = jnp.where(healthy & ~finite, state["step"] + 1, state["diverged_at"])
        return new, metrics

    return guarded


def pool_step(model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout = SINGLE) -> Callable:
    """The vmapped, jitted pool step `(stacked_state, batches (N, B, T+1)) -> (state, metrics)`,
    with the stacked state donated. Cached: one compilation per configuration, layout and pool size."""
    return _pool_step(model_cfg, train_cfg, layout)  # one cache key, layout given or not


@functools.lru_cache(maxsize=8)
def _pool_step(model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout) -> Callable:
    return mesh.sharded_step(jax.vmap(make_guarded_step(model_cfg, train_cfg)), layout, stacked=True)


pool_step.cache_clear = _pool_step.cache_clear


@functools.lru_cache(maxsize=8)
def pool_eval(model_cfg: ModelConfig, layout: Layout = SINGLE) -> Callable:
    """Every candidate's loss on every window of the same fixed batches: (N, windows)."""
    return mesh.replicated_result(jax.vmap(train.make_eval(model_cfg), in_axes=(0, None)), layout)


def candidate_state(params: dict, opt_state, lr_scale: float) -> State:
    return {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32),
            "lr_scale": jnp.asarray(lr_scale, jnp.float32), "diverged_at": jnp.asarray(-1, jnp.int32)}


def stack(states: list[State]) -> State:
    """Stack on a leading candidate axis, committed to the default device like a state restored
    by Orbax: jit keys its cache on committedness, and a probe then a train-final in one process
    should share one compiled program."""
    return jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), jax.local_devices()[0])


def take(state: State, index) -> State:
    """Candidates `index` (an int array) of a stacked state: one compiled gather for the whole
    tree (per tree and index length), where indexing leaf by leaf compiled a program per leaf
    shape, about a hundred per chunked pool."""
    return _take(state, jnp.asarray(np.asarray(index), jnp.int32))


@jax.jit
def _take(state: State, index: jax.Array) -> State:
    return jax.tree.map(lambda x: x[index], state)


def device_memory() -> tuple[int, str]:
    """Bytes the default device holds and where the figure comes from: the accelerator's
    `bytes_limit` (what JAX's allocator may take) where `memory_stats()` has one, else the host's
    memory (CPU, as resources.available_memory counts it); never more than LAGGROW_MEMORY when set."""
    device = jax.local_devices()[0]
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")  # CPU: None
    except (RuntimeError, NotImplementedError, AttributeError):  # a backend without memory statistics
        limit = None
    memory, source = (int(limit), f"{device.device_kind} bytes_limit") if limit else (None, "")
    if os.environ.get(resources.MEMORY_ENV, "").strip():
        allowed = resources.available_memory()
        if memory is None or allowed < memory:
            memory, source = allowed, resources.MEMORY_ENV
    if memory is None:
        memory, source = resources.available_memory(), f"{device.platform} host memory"
    return memory, source


def chunk_for(chunk_size: int | str, target: RunConfig, n: int, devices: int = 1) -> dict:
    """How many of `n` candidates of `target` train together, as pool.json records it: `together`,
    and for `chunk_size: auto` the memory it was sized from: one device's, times the `devices` of
    the mesh's candidate axis that share the pool (each holds its part of the candidates). An
    integer is taken as it is (0: all)."""
    if chunk_size != AUTO:
        return {"chunk_size": chunk_size, "together": n if chunk_size <= 0 else min(chunk_size, n)}
    memory, source = device_memory()
    if devices > 1:
        memory, source = memory * devices, f"{source} x {devices} devices"
    fixed, per_candidate = resources.pool_chunk_bytes(target, n)
    together = resources.chunk_that_fits(per_candidate, fixed, memory, n)
    return {"chunk_size": AUTO, "together": together, "memory_bytes": memory, "memory_from": source,
            "fraction": resources.AUTO_CHUNK_FRACTION, "pool_state_bytes": fixed,
            "per_candidate_bytes": per_candidate}


@dataclass
class PoolRunner:
    """Advances a stacked pool state between steps, chunk by chunk, evaluating on request."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    batches: Callable[[int], np.ndarray]  # step -> (N, B, T+1) batches, one per candidate
    # name -> (n, B, T+1) held-out windows, the same for every candidate: "selection" (what choices
    # read) and, where results are reported from this runner, "test" (data.split_heldout)
    eval_sets: dict[str, np.ndarray]
    chunk_size: int = 0  # 0: all candidates at once
    layout: Layout = SINGLE  # the devices the candidates and batches are spread over

    def _chunks(self, n: int) -> tuple[list[np.ndarray], int]:
        """The candidates of each chunk, and the size every chunk is padded to: a multiple of the
        mesh's candidate axis, so each device trains the same number of candidates."""
        size = n if self.chunk_size <= 0 else min(self.chunk_size, n)
        return [np.arange(i, min(i + size, n)) for i in range(0, n, size)], mesh.padded_size(size, self.layout)

    def _place(self, state: State) -> State:
        return mesh.place_state(state, self.layout, stacked=True)

    def advance(self, state: State, start: int, stop: int) -> tuple[State, np.ndarray]:
        """Train every candidate from step `start` to `stop`; returns the new state and each
        candidate's train loss at the last step (NaN where it diverged)."""
        state, losses, _ = self.advance_until(state, start, stop)
        return state, losses

    def advance_until(self, state: State, start: int, stop: int,
                      should_stop: Callable[[], bool] | None = None) -> tuple[State, np.ndarray, int]:
        """`advance`, asking `should_stop()` before every step: returns (state, train losses,
        the step reached), which is < `stop` when asked to stop. With chunks, the first chunk
        decides where to stop and the others are trained to that same step, so every candidate
        of the returned state is at one step."""
        n = int(state["step"].shape[0])
        chunks, size = self._chunks(n)
        step = pool_step(self.model_cfg, self.train_cfg, self.layout)

        def run(chunk: State, select, until: int, ask: bool) -> tuple[State, np.ndarray, int]:
            losses = np.full(size, np.nan)
            chunk = self._place(chunk)
            i = start
            while i < until and not (ask and should_stop is not None and should_stop()):
                batch = self.batches(i)
                batch = batch if select is None else batch[select]
                chunk, metrics = step(chunk, mesh.place_batch(batch, self.layout, stacked=True))
                losses = metrics["loss"]
                i += 1
            return chunk, np.asarray(losses, dtype=np.float64), i

        if len(chunks) == 1 and size == n:
            return run(state, None, stop, ask=True)
        parts, losses, reached = [], [], stop
        for c, idx in enumerate(chunks):
            padded = np.concatenate([idx, np.full(size - len(idx), idx[0])])  # one compiled shape
            chunk, chunk_losses, at = run(take(state, padded), padded, reached, ask=c == 0)
            reached = at if c == 0 else reached
            # on the host: the next chunk gets the device's memory (every process gets every piece)
            parts.append(mesh.to_host(take(chunk, np.arange(len(idx)))))
            losses.append(chunk_losses[: len(idx)])
        state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
        return state, np.concatenate(losses), reached

    def evaluate(self, state: State, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Per evaluation set (`names`, default all), every candidate's loss on every window:
        (N, windows) float64, NaN rows for candidates that diverged."""
        names = tuple(self.eval_sets) if names is None else names
        n = int(state["step"].shape[0])
        chunks, size = self._chunks(n)
        evaluate = pool_eval(self.model_cfg, self.layout)
        diverged = mesh.to_host(state["diverged_at"]) >= 0
        out: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for idx in chunks:
            padded = np.concatenate([idx, np.full(size - len(idx), idx[0])])
            params = state["params"] if len(chunks) == 1 and size == n else take(state["params"], padded)
            params = mesh.place_state(params, self.layout, stacked=True)
            for name in names:
                held_out = mesh.place_eval(self.eval_sets[name], self.layout)
                out[name].append(np.asarray(mesh.to_host(evaluate(params, held_out)), np.float64)[: len(idx)])
        result = {}
        for name, parts in out.items():
            losses = np.concatenate(parts)
            losses[diverged] = np.nan
            result[name] = losses
        return result
