"""LAG itself: grow every candidate of a pool, probe them k steps together, continue to T.

A pool directory (names in `laggrow.store`) holds pool.json (the resolved pool, its
fingerprint, where it came from), config.json (the grown model's run config, train.steps =
final_steps), curves.jsonl (one record per candidate per evaluated step, see
`records.make_records`), probe.json and probe_state/ (the ranking and every state at k), and
final.json and final_state/ (the ranking at T and train-final's checkpoints).

The probe is written into a staging directory renamed at the end, so an interrupted or rejected
probe leaves nothing; train-final checkpoints as it goes and resumes from the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from laggrow import formats, growth, hosts, interrupt, mesh, run_dir, store, train
from laggrow.checkpoint import Checkpointer
from laggrow.config import MeshConfig, RunConfig
from laggrow.data import Dataset
from laggrow.errors import LaggrowError
from laggrow.pool import records
from laggrow.pool.records import make_records, ranking
from laggrow.pool.spec import AUTO, PoolConfig, load_pool_config, pool_config_from_dict
from laggrow.pool.step import PoolRunner, candidate_state, chunk_for, stack, take

OnEval = Callable[[int, list[dict]], None]


# ---------------------------------------------------------------------------------------------
# Candidates


def _resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """A fusion partner is named by the path of another run; growth wants its params."""
    options = dict(options)
    if isinstance(options.get("partner"), str):
        options["partner"] = run_dir.load_run(Path(options["partner"]), what="fusion partner").params
    return options


def check_pool(pool: PoolConfig, source: RunConfig, target: RunConfig) -> list[dict[str, Any]]:
    """Every check that needs no training: names, options, target size. Returns the candidates
    with their `function_preserving` flags."""
    src, dst = source.model, target.model
    growth.transform.check_grows(src, dst, "pool target")
    candidates = pool.candidates()
    for c in candidates:
        # Another run as fusion partner is loaded only when growing; an empty placeholder tells
        # the registry that a partner other than the model itself is used.
        options = {k: ({} if k == "partner" else v) for k, v in c["options"].items()}
        growth.check_request(src, dst, c["name"], options)
        c["function_preserving"] = growth.is_function_preserving(c["name"], **options)
    return candidates


def grow_candidates(pool: PoolConfig, source: run_dir.LoadedRun, target: RunConfig,
                    candidates: list[dict[str, Any]]) -> dict:
    """Grow every candidate and stack their train states on a leading candidate axis."""
    states = []
    for c in candidates:
        params, opt_state = growth.grown_state(source.params, source.state["opt_state"], source.config.model,
                                              target.model, c["name"], jax.random.key(c["seed"]),
                                              pool.optimizer_state, target.train, **_resolve_options(c["options"]))
        states.append(candidate_state(params, opt_state, c["lr_scale"]))
    return stack(states)


def abstract_pool_state(target: RunConfig, n: int) -> dict:
    """Shapes of a stacked pool state of `n` candidates, the target for Orbax restores."""
    from laggrow import model

    optimizer = train.make_optimizer(target.train)

    def one(params):
        return candidate_state(params, optimizer.init(params), 1.0)

    single = jax.eval_shape(one, model.param_shapes(target.model))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((n, *s.shape), s.dtype), single)


# ---------------------------------------------------------------------------------------------
# The shared training segment loop


def run_segments(runner: PoolRunner, state: dict, candidates: list[dict], start: int, stop: int,
                  eval_steps: list[int], target: RunConfig, curves: Path, on_eval: OnEval | None,
                  checkpoint: Callable[[dict, int], None] | None = None, checkpoint_every: int = 0,
                  should_stop: Callable[[], bool] | None = None) -> tuple[dict, int]:
    """Advance from `start` to `stop`, evaluating at `eval_steps` and appending to curves.jsonl.
    Returns the state and the step it is at: `stop`, or earlier when `should_stop()` said so
    (asked between steps; nothing is recorded for a step short of an evaluation)."""
    tokens_per_step, flops = target.model.train_step_compute(target.train.batch_size, target.data.seq_len)
    flops_per_step = float(flops)
    saves = {stop} | (set(range(checkpoint_every, stop, checkpoint_every)) if checkpoint_every else set())
    saves = {s for s in saves if s > start}
    # Step 0 (the loss right after growth) is evaluated before any training; a continuation
    # from `start` > 0 already has its records up to `start`.
    marks = {s for s in eval_steps if start < s <= stop or s == start == 0} | saves | {stop}
    position = start
    for mark in sorted(marks):
        state, train_losses, position = runner.advance_until(state, position, mark, should_stop)
        if position < mark:
            return state, position
        if mark in eval_steps:
            counts = mesh.to_host({"step": state["step"], "diverged_at": state["diverged_at"]})
            # the test set is read where results are: at T
            sets = (SELECTION, TEST) if mark == target.train.steps else (SELECTION,)
            rows = make_records(candidates, mark, runner.evaluate(state, sets), train_losses, counts,
                                flops_per_step, tokens_per_step)
            store.append_jsonl(curves, rows)
            if on_eval is not None:
                on_eval(mark, rows)
        if checkpoint is not None and mark in saves:
            checkpoint(state, mark)
    return state, position


def data_stream(source: run_dir.LoadedRun, target: RunConfig) -> dict[str, Any]:
    """Where a pool's batches come from, recorded in pool.json: pool step p of seed s reads batch
    `start + p` of the stream seeded `target.train.seed + s`, where `start` is the position the
    source run stopped at. The source trained on positions below `start`, so no (stream, position)
    of the pool is one the source read; for seed 0 of an unchanged train.seed the pool simply
    continues the source's stream. (From position 0, every candidate would re-read the batches
    the source model saw first.)"""
    return {"continues": "source", "start": int(source.data_position), "seed": int(target.train.seed),
            "source_seed": int(source.config.train.seed),
            "rule": "pool step p of seed s reads batch start + p of the stream seeded seed + s"}


def read_data_stream(meta: dict, path: Path) -> int:
    """The recorded start position of a pool's batch stream (see `data_stream`); one line for a pool
    that cannot be continued (`formats.require_continuable_pool`)."""
    formats.require_continuable_pool(meta, path)
    return meta["data_stream"]["start"]


@dataclass(frozen=True)
class Placement:
    """How a pool's candidates train: how many together (`chunking`, as `chunk_for` records it)
    and on which devices (`layout`)."""

    chunking: dict[str, Any]
    layout: mesh.Layout

    def record(self) -> dict[str, Any]:
        """pool.json's and final.json's entries."""
        return {"chunking": self.chunking, "layout": self.layout.record()}


def placement_for(pool: PoolConfig, target: RunConfig, n: int, mesh_cfg: MeshConfig | None = None) -> Placement:
    """How `n` candidates of `pool` train: the chunking (`chunk_for`) and the device layout
    (`mesh.resolve` of `mesh_cfg`, default the pool's `mesh`). One line if the layout is
    impossible here."""
    wanted = mesh_cfg or pool.mesh
    # the memory `auto` sizes chunks from is that of the devices the candidate axis would spread
    # the whole pool over; the layout is then that of the candidates trained together
    spread = mesh.resolve(wanted, jax.device_count(), target.train.batch_size, n_candidates=n)
    chunking = chunk_for(pool.chunk_size, target, n, devices=spread.candidates)
    c = spread.candidates
    if pool.chunk_size == AUTO and chunking["together"] < n and chunking["together"] > c:
        chunking["together"] -= chunking["together"] % c  # padded chunks would outgrow what fits
    layout = mesh.resolve(wanted, jax.device_count(), target.train.batch_size, n_candidates=chunking["together"])
    return Placement(chunking, layout)


def runner_for(pool: PoolConfig, target: RunConfig, data: Dataset, candidates: list[dict], start: int,
               placement: Placement | None = None) -> PoolRunner:
    """Batches: the candidates of one seed all see that seed's stream, batch for batch, from
    position `start` on (the source's stopping point, see `data_stream`). `placement` (default:
    `placement_for` these candidates) says how many train together, on which devices."""
    seeds = [c["seed"] for c in candidates]
    base = target.train.seed

    def batches(step: int) -> np.ndarray:
        per_seed = {s: data.train_batch(start + step, target.train.batch_size, base + s) for s in set(seeds)}
        return np.stack([per_seed[s] for s in seeds])

    placement = placement or placement_for(pool, target, len(candidates))
    return PoolRunner(target.model, target.train, batches, eval_sets(pool, data, target),
                      placement.chunking["together"], placement.layout)


SELECTION, TEST = "selection", "test"


def eval_sets(pool: PoolConfig, data: Dataset, target: RunConfig) -> dict[str, np.ndarray]:
    """The pool's two evaluation sets: the selection set every choice reads (`data.eval_batches`
    batches, at every evaluated step) and the test set every result is reported on
    (`pool.test_batches`, at T), both of `data.eval_batch_size` windows."""
    size = target.data.eval_batch_size
    return {SELECTION: data.selection_batches(target.data.eval_batches, size),
            TEST: data.test_batches(pool.test_batches, size)}


def evaluation_record(pool: PoolConfig, data: Dataset, target: RunConfig) -> dict[str, Any]:
    """pool.json's `evaluation`: which held-out documents each set holds, how many windows each
    reads, where, and whether its windows overlap (a set too short for them: then its standard
    error is an underestimate)."""
    need = target.data.seq_len + 1
    windows = {SELECTION: target.data.eval_batches * target.data.eval_batch_size,
               TEST: pool.test_batches * target.data.eval_batch_size}
    tokens = {SELECTION: data.split["selection_tokens"], TEST: data.split["test_tokens"]}
    return {**data.split, "selection_windows": windows[SELECTION], "test_windows": windows[TEST],
            "window_tokens": target.data.seq_len,
            "overlapping": sorted(name for name in windows if windows[name] * need > tokens[name]),
            "fields": {"eval_loss": "selection set, every evaluated step (what choices read)",
                       "test_loss": "test set, at final_steps (what results are reported on)"}}


def write_pool_records(directory: Path, pool: PoolConfig, pool_file: Path | None, source: run_dir.LoadedRun,
                       target: RunConfig, candidates: list[dict], data: Dataset, placement: Placement,
                       **extra: Any) -> None:
    """pool.json (the resolved pool, its fingerprint, where it came from, its candidates, batch
    stream, protocol, evaluation sets and placement, plus `extra`) and config.json (the grown
    model's run config) of a new pool directory: what a probe and a trained halving both write."""
    store.write_json(directory / store.POOL_FILE, formats.with_version({
        "pool": pool.to_dict(), "fingerprint": pool.fingerprint(),
        "pool_file": str(Path(pool_file).absolute()) if pool_file else None,
        "source": str(source.path.absolute()), "candidates": candidates,
        "data_stream": data_stream(source, target), "protocol": pool.protocol(target),
        "evaluation": evaluation_record(pool, data, target), **placement.record(), **extra}))
    store.write_json(directory / store.CONFIG_FILE, formats.with_version(target.to_dict()))


# ---------------------------------------------------------------------------------------------
# probe and train-final


def check_probe_inputs(pool: PoolConfig, out: Path) -> None:
    """What a probe can check before loading anything: its --out and its fusion partners."""
    store.check_new_dir(out, "--out")
    store.check_not_staged(out, "--out")  # another probe building it: refused before any work
    store.check_outside_runs(out, "--out")
    for c in pool.candidates():
        partner = c["options"].get("partner")
        if isinstance(partner, str):
            run_dir.read_run_config(Path(partner), what=f"fusion partner of {c['strategy']}")


def probe(pool: PoolConfig, out: Path, pool_file: Path | None = None, on_eval: OnEval | None = None,
          on_start: Callable[[PoolConfig, list[dict]], None] | None = None) -> list[dict]:
    """Grow every candidate and train them all `lag_steps` steps; returns the ranking at k.
    `pool_file` is the YAML the pool was read from, recorded so that train-final can tell when
    it changed since. Interrupted (Ctrl-C, SIGTERM), it writes nothing."""
    check_probe_inputs(pool, out)
    source = run_dir.load_run(Path(pool.source), what="pool source")
    target = pool.target_run_config(source.config)
    candidates = check_pool(pool, source.config, target)
    data = run_dir.load_source_dataset(source)
    placement = placement_for(pool, target, len(candidates))  # an impossible mesh is one line, before anything
    if on_start is not None:
        on_start(pool, candidates)
    with interrupt.deferred(), store.staged_dir(out) as tmp:
        write_pool_records(tmp, pool, pool_file, source, target, candidates, data, placement)
        state = grow_candidates(pool, source, target, candidates)
        runner = runner_for(pool, target, data, candidates, int(source.data_position), placement)
        curves = tmp / store.CURVES_FILE
        state, reached = run_segments(runner, state, candidates, 0, pool.lag_steps, pool.eval_steps(), target,
                                       curves, on_eval, should_stop=interrupt.requested)
        if reached < pool.lag_steps:  # leaving the block removes the staging directory
            raise interrupt.Interrupted("nothing written; run the probe again")
        with Checkpointer(tmp / store.PROBE_STATE) as ckpt:
            ckpt.save(state, data_position=pool.lag_steps, step=pool.lag_steps)
        hosts.barrier(f"probe {out} curves")  # process 0 has written them
        rows = ranking(candidates, records.read_pool_curves(curves), pool.lag_steps)
        store.write_json(tmp / store.PROBE_FILE, {"lag_steps": pool.lag_steps, "final_steps": pool.final_steps,
                                     "candidates": rows})
    return rows


def read_pool_dir(directory: Path) -> tuple[PoolConfig, dict, RunConfig]:
    """The pool, pool.json and the grown model's run config of a probe directory, each checked:
    a damaged file is one line. Refuses a pool file edited since the probe, naming what changed."""
    directory = Path(directory)
    if not (directory / store.POOL_FILE).is_file() or not (directory / store.PROBE_FILE).is_file():
        raise LaggrowError(f"{directory}: holds no probe (expected a directory written by laggrow probe)")
    meta = records.read_pool_record(directory)
    pool = pool_config_from_dict(meta["pool"], where=f"{directory / store.POOL_FILE}")
    if len(meta["candidates"]) != len(pool.candidates()):
        raise LaggrowError(f"{directory / store.POOL_FILE}: {len(meta['candidates'])} candidates for a pool of "
                           f"{len(pool.candidates())} (expected the pool record written by laggrow probe; "
                           "is it damaged?)")
    pool_file = Path(meta["pool_file"]) if meta.get("pool_file") else None
    if pool_file is not None and pool_file.is_file():
        changed = records.changed_keys(meta["pool"], load_pool_config(pool_file).to_dict())
        if changed:
            raise LaggrowError(f"pool {pool_file}: changed since the probe in {directory} "
                               f"({', '.join(changed)}); probe again into a new --out")
    return pool, meta, run_dir.read_run_config(directory, what="pool directory")


def _restore(directory: Path, pool: PoolConfig, target: RunConfig, n: int, selected: list[int],
             layout: mesh.Layout) -> tuple[dict, int]:
    """The state to continue: train-final's own last checkpoint, else the probe's at k, restored
    onto `layout` whichever layout saved it. Reads only (a Checkpointer is opened only on a
    directory that exists: it would create one)."""
    final_dir = directory / store.FINAL_STATE

    def abstract(count: int) -> dict:
        return mesh.abstract_state(abstract_pool_state(target, count), layout, stacked=True)

    if (final_dir / store.CHECKPOINT_DIR).is_dir():
        with Checkpointer(final_dir) as ckpt:
            if ckpt.latest_step() is not None:
                # the newest intact one; damaged newer ones are removed so their steps can be saved again
                state, position = ckpt.restore(abstract(len(selected)), remove_damaged=True)
                return state, position
    probe_dir = directory / store.PROBE_STATE
    if not (probe_dir / store.CHECKPOINT_DIR).is_dir():
        raise LaggrowError(f"{probe_dir}: missing (expected the probe's states at k={pool.lag_steps}, written "
                           "by laggrow probe); probe again into a new --out")
    with Checkpointer(probe_dir) as ckpt:
        if ckpt.latest_step() != pool.lag_steps:
            raise LaggrowError(f"{probe_dir}: no finished checkpoint at step k={pool.lag_steps} (expected the "
                               "probe's states; is it damaged?); probe again into a new --out")
        state, _ = ckpt.restore(abstract(n), step=pool.lag_steps)
    return take(state, selected), pool.lag_steps


def train_final(directory: Path, steps: int | None = None, only: int | None = None,
                on_eval: OnEval | None = None, mesh_cfg: MeshConfig | None = None) -> list[dict] | None:
    """Continue the probed candidates (or the best `only` at k) to T, resumably, holding the
    pool directory's lock. Returns the final ranking once T is reached, else None. Everything
    is read and checked before anything is written; interrupted (Ctrl-C, SIGTERM), it saves a
    checkpoint at the step it reached and raises `interrupt.Interrupted`. `mesh_cfg` (default: the
    pool's `mesh`) lays it out over devices; it may differ from the probe's."""
    directory = Path(directory).absolute()
    if not (directory / store.POOL_FILE).is_file():  # the lock would create a missing directory
        raise LaggrowError(f"{directory}: holds no probe (expected a directory written by laggrow probe)")
    with store.DirLock(directory, "pool directory"):
        return _train_final(directory, steps, only, on_eval, mesh_cfg)


def _train_final(directory: Path, steps: int | None, only: int | None, on_eval: OnEval | None,
                 mesh_cfg: MeshConfig | None) -> list[dict] | None:
    pool, meta, target = read_pool_dir(directory)
    stop = pool.final_steps if steps is None else steps
    if not pool.lag_steps <= stop <= pool.final_steps:
        raise LaggrowError(f"--steps: expected a step in [lag_steps={pool.lag_steps}, "
                           f"final_steps={pool.final_steps}], got {stop}")
    candidates = meta["candidates"]
    probe_rows = records.read_ranking(directory / store.PROBE_FILE, len(candidates),
                                      "ranking at k written by laggrow probe")["candidates"]
    selection_file = directory / store.FINAL_STATE / store.SELECTION_FILE
    if selection_file.is_file():
        selected = records.read_selection(selection_file, len(candidates))
        if only is not None and only != len(selected):
            raise LaggrowError(f"--only {only}: train-final already continues {len(selected)} candidates "
                               f"in {directory} (expected --only {len(selected)} or none)")
    else:
        if only is not None and not 1 <= only <= len(candidates):
            raise LaggrowError(f"--only: expected an integer in [1, {len(candidates)}], got {only}")
        ranked = [r["candidate"] for r in probe_rows]
        selected = sorted(ranked[:only] if only is not None else ranked)
    chosen = [candidates[i] for i in selected]
    curves = directory / store.CURVES_FILE
    existing = records.read_pool_curves(curves)
    start_position = read_data_stream(meta, directory / store.POOL_FILE)
    source = Path(meta["source"])
    source_cfg = run_dir.read_run_config(source, what="pool source")
    data = run_dir.load_source_dataset(source, source_cfg)
    placement = placement_for(pool, target, len(chosen), mesh_cfg)
    with interrupt.deferred():
        state, start = _restore(directory, pool, target, len(candidates), selected, placement.layout)
        # every process has read the directory as it was before process 0 writes to it
        hosts.barrier(f"train-final {directory} restored")
        # Every check is behind us: from here on the directory is written.
        store.ensure_dir(directory / store.FINAL_STATE, "pool directory")
        store.write_json(selection_file, {"candidates": selected}, if_changed=True)
        # Records past the restored step were written by an interrupted process: they are redone.
        store.rewrite_jsonl(curves, [r for r in existing if r["step"] <= start])
        with Checkpointer(directory / store.FINAL_STATE) as final_ckpt:
            saved = {start}

            def save(s: dict, step: int) -> None:
                final_ckpt.save(s, data_position=step, step=step)
                saved.add(step)

            if start < stop:
                runner = runner_for(pool, target, data, chosen, start_position, placement)
                state, reached = run_segments(runner, state, chosen, start, stop, pool.eval_steps(), target,
                                               curves, on_eval, checkpoint=save,
                                               checkpoint_every=pool.checkpoint_every,
                                               should_stop=interrupt.requested)
                if reached < stop:
                    if reached not in saved or final_ckpt.latest_step() is None:
                        save(state, reached)
                    raise interrupt.Interrupted(f"saved step {reached} of {directory}; continue with: "
                                                f"laggrow train-final {directory}")
    if stop < pool.final_steps:
        return None
    hosts.barrier(f"train-final {directory} curves")  # process 0 has written them
    rows = ranking(chosen, records.read_pool_curves(curves), pool.final_steps, by="test_loss")
    store.write_json(directory / store.FINAL_FILE, {"lag_steps": pool.lag_steps, "final_steps": pool.final_steps,
                                       "candidates": rows, **placement.record()})
    return rows
