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

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from laggrow import growth, runs, store, train
from laggrow.checkpoint import Checkpointer
from laggrow.config import RunConfig
from laggrow.data import Dataset, load_dataset
from laggrow.errors import LaggrowError
from laggrow.pool.config import PoolConfig, load_pool_config, pool_config_from_dict
from laggrow.pool.records import make_records, ranking
from laggrow.pool.step import PoolRunner, candidate_state, stack, take

OnEval = Callable[[int, list[dict]], None]


# ---------------------------------------------------------------------------------------------
# Candidates


def _resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """A fusion partner is named by the path of another run; growth wants its params."""
    options = dict(options)
    if isinstance(options.get("partner"), str):
        options["partner"] = runs.load_run(Path(options["partner"]), what="fusion partner").params
    return options


def check_pool(pool: PoolConfig, source: RunConfig, target: RunConfig) -> list[dict[str, Any]]:
    """Every check that needs no training: names, options, target size. Returns the candidates
    with their `function_preserving` flags."""
    src, dst = source.model, target.model
    if all(getattr(dst, f) == getattr(src, f) for f in growth.transform.GROWN_FIELDS):
        raise LaggrowError(f"pool target: expected a model larger than the source ({src.n_layers} layers, "
                           f"d_model {src.d_model}, d_ff {src.d_ff}), got the same size")
    candidates = pool.candidates()
    for c in candidates:
        growth.plan_stages(src, dst, c["name"])
        # Another run as fusion partner is loaded only when growing; an empty placeholder tells
        # the registry that a partner other than the model itself is used.
        options = {k: ({} if k == "partner" else v) for k, v in c["options"].items()}
        c["function_preserving"] = growth.is_function_preserving(c["name"], **options)
    return candidates


def grow_candidates(pool: PoolConfig, source: runs.LoadedRun, target: RunConfig,
                    candidates: list[dict[str, Any]]) -> dict:
    """Grow every candidate and stack their train states on a leading candidate axis."""
    optimizer = train.make_optimizer(target.train)
    src, dst = source.config.model, target.model
    states = []
    for c in candidates:
        key = jax.random.key(c["seed"])
        options = _resolve_options(c["options"])
        params = growth.grow(source.params, src, dst, c["name"], key, **options)
        if pool.optimizer_state == "carry":
            opt_state = train.restart_schedule(
                growth.grow_opt_state(source.state["opt_state"], src, dst, c["name"], key, **options))
        else:
            opt_state = optimizer.init(params)
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


def _run_segments(runner: PoolRunner, state: dict, candidates: list[dict], start: int, stop: int,
                  eval_steps: list[int], target: RunConfig, curves: Path, on_eval: OnEval | None,
                  checkpoint: Callable[[dict, int], None] | None = None, checkpoint_every: int = 0) -> dict:
    """Advance from `start` to `stop`, evaluating at `eval_steps` and appending to curves.jsonl."""
    seq = target.data.seq_len
    tokens_per_step = target.train.batch_size * seq
    flops_per_step = float(target.model.train_flops_per_token(seq) * tokens_per_step)
    saves = {stop} | (set(range(checkpoint_every, stop, checkpoint_every)) if checkpoint_every else set())
    saves = {s for s in saves if s > start}
    # Step 0 (the loss right after growth) is evaluated before any training; a continuation
    # from `start` > 0 already has its records up to `start`.
    marks = {s for s in eval_steps if start < s <= stop or s == start == 0} | saves | {stop}
    position = start
    for mark in sorted(marks):
        state, train_losses = runner.advance(state, position, mark)
        position = mark
        if mark in eval_steps:
            records = make_records(candidates, mark, runner.evaluate(state), train_losses, state,
                                   flops_per_step, tokens_per_step)
            store.append_jsonl(curves, records)
            if on_eval is not None:
                on_eval(mark, records)
        if checkpoint is not None and mark in saves:
            checkpoint(state, mark)
    return state


def _runner(pool: PoolConfig, target: RunConfig, data: Dataset, candidates: list[dict]) -> PoolRunner:
    """Batches: the candidates of one seed all see that seed's stream, batch for batch."""
    seeds = [c["seed"] for c in candidates]
    base = target.train.seed

    def batches(step: int) -> np.ndarray:
        per_seed = {s: data.train_batch(step, target.train.batch_size, base + s) for s in set(seeds)}
        return np.stack([per_seed[s] for s in seeds])

    eval_batches = data.eval_batches(target.data.eval_batches, target.data.eval_batch_size)
    return PoolRunner(target.model, target.train, batches, eval_batches, pool.chunk_size)


# ---------------------------------------------------------------------------------------------
# probe and train-final


def probe(pool: PoolConfig, out: Path, pool_file: Path | None = None, on_eval: OnEval | None = None,
          on_start: Callable[[PoolConfig, list[dict]], None] | None = None) -> list[dict]:
    """Grow every candidate and train them all `lag_steps` steps; returns the ranking at k.
    `pool_file` is the YAML the pool was read from, recorded so that train-final can tell when
    it changed since."""
    source = runs.load_run(Path(pool.source), what="pool source")
    target = pool.target_run_config(source.config)
    candidates = check_pool(pool, source.config, target)
    data = load_dataset(source.config.data, source.path)
    if on_start is not None:
        on_start(pool, candidates)
    with store.staged_dir(out) as tmp:
        store.write_json(tmp / store.POOL_FILE, {"pool": pool.to_dict(), "fingerprint": pool.fingerprint(),
                                    "pool_file": str(Path(pool_file).absolute()) if pool_file else None,
                                    "source": str(source.path.absolute()), "candidates": candidates})
        store.write_json(tmp / store.CONFIG_FILE, target.to_dict())
        state = grow_candidates(pool, source, target, candidates)
        runner = _runner(pool, target, data, candidates)
        curves = tmp / store.CURVES_FILE
        state = _run_segments(runner, state, candidates, 0, pool.lag_steps, pool.eval_steps(), target,
                              curves, on_eval)
        with Checkpointer(tmp / store.PROBE_STATE) as ckpt:
            ckpt.save(state, data_position=pool.lag_steps, step=pool.lag_steps)
        rows = ranking(candidates, store.read_jsonl(curves, "pool records"), pool.lag_steps)
        store.write_json(tmp / store.PROBE_FILE, {"lag_steps": pool.lag_steps, "final_steps": pool.final_steps,
                                     "candidates": rows})
    return rows


def read_pool_dir(directory: Path) -> tuple[PoolConfig, dict, RunConfig]:
    directory = Path(directory)
    if not (directory / store.POOL_FILE).is_file() or not (directory / store.PROBE_FILE).is_file():
        raise LaggrowError(f"{directory}: holds no probe (expected a directory written by laggrow probe)")
    meta = json.loads((directory / store.POOL_FILE).read_text(encoding="utf-8"))
    pool = pool_config_from_dict(meta["pool"], where=f"{directory / store.POOL_FILE}")
    pool_file = Path(meta["pool_file"]) if meta.get("pool_file") else None
    if pool_file is not None and pool_file.is_file():
        current = load_pool_config(pool_file)
        if current.fingerprint() != meta["fingerprint"]:
            changed = [k for k, v in current.to_dict().items() if meta["pool"].get(k) != v]
            raise LaggrowError(f"pool {pool_file}: changed since the probe in {directory} "
                               f"({', '.join(changed)}); probe again into a new --out")
    return pool, meta, runs.read_run_config(directory)


def train_final(directory: Path, steps: int | None = None, only: int | None = None,
                on_eval: OnEval | None = None) -> list[dict] | None:
    """Continue the probed candidates (or the best `only` at k) to T, resumably. Returns the
    final ranking once T is reached, else None."""
    directory = Path(directory).absolute()
    pool, meta, target = read_pool_dir(directory)
    stop = pool.final_steps if steps is None else steps
    if not pool.lag_steps <= stop <= pool.final_steps:
        raise LaggrowError(f"--steps: expected a step in [lag_steps={pool.lag_steps}, "
                           f"final_steps={pool.final_steps}], got {stop}")
    candidates = meta["candidates"]
    probe_rows = json.loads((directory / store.PROBE_FILE).read_text(encoding="utf-8"))["candidates"]
    selection_file = directory / store.FINAL_STATE / store.SELECTION_FILE
    if selection_file.is_file():
        selected = json.loads(selection_file.read_text(encoding="utf-8"))["candidates"]
        if only is not None and only != len(selected):
            raise LaggrowError(f"--only {only}: train-final already continues {len(selected)} candidates "
                               f"in {directory} (expected --only {len(selected)} or none)")
    else:
        if only is not None and not 1 <= only <= len(candidates):
            raise LaggrowError(f"--only: expected an integer in [1, {len(candidates)}], got {only}")
        ranked = [r["candidate"] for r in probe_rows]
        selected = sorted(ranked[:only] if only is not None else ranked)
    chosen = [candidates[i] for i in selected]

    source_cfg = runs.read_run_config(Path(meta["source"]), what="pool source")
    data = load_dataset(source_cfg.data, Path(meta["source"]))
    (directory / store.FINAL_STATE).mkdir(exist_ok=True)
    store.write_json(selection_file, {"candidates": selected})
    with Checkpointer(directory / store.FINAL_STATE) as final_ckpt:
        start = final_ckpt.latest_step()
        if start is None:
            with Checkpointer(directory / store.PROBE_STATE) as probe_ckpt:
                state, _ = probe_ckpt.restore(abstract_pool_state(target, len(candidates)), step=pool.lag_steps)
            state, start = take(state, selected), pool.lag_steps
        else:
            state, _ = final_ckpt.restore(abstract_pool_state(target, len(selected)))
        # Records past the restored step were written by an interrupted process: they are redone.
        curves = directory / store.CURVES_FILE
        store.rewrite_jsonl(curves, [r for r in store.read_jsonl(curves, "pool records") if r["step"] <= start])
        if start < stop:
            runner = _runner(pool, target, data, chosen)
            _run_segments(runner, state, chosen, start, stop, pool.eval_steps(), target, curves, on_eval,
                          checkpoint=lambda s, step: final_ckpt.save(s, data_position=step, step=step),
                          checkpoint_every=pool.checkpoint_every)
    if stop < pool.final_steps:
        return None
    rows = ranking(chosen, store.read_jsonl(directory / store.CURVES_FILE, "pool records"), pool.final_steps)
    store.write_json(directory / store.FINAL_FILE, {"lag_steps": pool.lag_steps, "final_steps": pool.final_steps,
                                       "candidates": rows})
    return rows
