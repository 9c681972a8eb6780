"""A training run on disk: validate, set up or resume the run directory, train, checkpoint.

`laggrow train` is a thin shell around `prepare_run` + `execute_run`. Everything that can be
wrong with the user's input (config, corpus, output directory, a changed corpus, another process
on the directory) is found by `prepare_run` before anything is written.

`execute_run` holds the directory's lock for the whole run, so a second process gets one line.
A fresh run that fails before its first checkpoint (a divergence, an error, a second Ctrl-C)
removes what it wrote, so the same command can simply be run again.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow import formats, hosts, run_dir, store
from laggrow.config import RunConfig
from laggrow.config_engine import differences
from laggrow.data import BPETokenizer, Dataset, data_fingerprint, load_dataset
from laggrow.errors import LaggrowError

# What a fresh run writes into its directory (removed again if it fails before a checkpoint).
_RUN_FILES = (store.CONFIG_FILE, store.DATA_FILE, store.TOKENIZER_FILE, store.METRICS_FILE)


@dataclass
class PreparedRun:
    config: RunConfig
    out: Path
    dataset: Dataset
    resume: bool  # True: continue from the checkpoint in `out`
    finished: bool = False  # `out` holds this run, finished: nothing to train
    layout: Any = None  # laggrow.mesh.Layout: the devices it trains on (cfg.mesh resolved by prepare_run)


def check_until(cfg: RunConfig, until: int | None) -> None:
    """`--until` must be a step of the run: one beyond train.steps would pause nothing."""
    if until is not None and not 1 <= until <= cfg.train.steps:
        raise LaggrowError(f"--until: expected a step in [1, train.steps={cfg.train.steps}], got {until}")


def prepare_run(cfg: RunConfig, out: Path, resume: bool) -> PreparedRun:
    """Load the corpus, fill the vocabulary from the tokenizer and check `out` against `cfg`."""
    out = Path(out).absolute()
    store.check_writable_target(out, "--out")
    if out.is_dir():  # another process on it comes first: the hints below would be wrong then
        store.check_unlocked(out, "--out")
    existing = out / store.CONFIG_FILE
    if out.is_dir() and not existing.is_file() and any(p.name != store.LOCK_FILE for p in out.iterdir()):
        raise LaggrowError(f"--out {out}: not empty and not a laggrow run (expected a new or empty directory)")
    if resume and not existing.is_file():
        raise LaggrowError(f"--resume: {out} holds no run to resume (expected a directory made by laggrow train)")

    import jax

    from laggrow import mesh

    # an impossible layout is one line before the corpus is even read
    layout = mesh.resolve(cfg.mesh, jax.device_count(), cfg.train.batch_size)
    dataset = load_dataset(cfg.data, out if existing.is_file() else None)
    if cfg.data.tokenizer == "hf":  # an imported model keeps its embedding's rows, padding included
        check_vocab_fits(cfg, dataset)
    else:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=dataset.vocab_size))
    cfg.validate()

    finished = False
    if existing.is_file():
        previous = run_dir.read_run_config(out, what="--out")
        diffs = differences(cfg.to_dict(), previous.to_dict())
        if diffs:
            raise LaggrowError(f"--out {out}: holds a different run ({'; '.join(diffs[:3])})")
        summary = run_dir.read_summary(out, "--out")
        finished = summary is not None and summary["complete"] is True
        if not resume:
            state = "a finished" if finished else "an unfinished"
            hint = "choose another --out" if finished else "pass --resume to continue it"
            raise LaggrowError(f"--out {out}: already holds {state} run of this config ({hint})")
        run_dir.check_data(out, cfg, dataset)
    return PreparedRun(config=cfg, out=out, dataset=dataset, resume=resume, finished=finished, layout=layout)


def check_vocab_fits(cfg: RunConfig, dataset: Dataset) -> None:
    """One line when a tokenizer makes ids beyond the model's embedding (model.vocab_size)."""
    if dataset.vocab_size > cfg.model.vocab_size:
        raise LaggrowError(f"model.vocab_size: expected at least the tokenizer's {dataset.vocab_size} ids, "
                           f"got {cfg.model.vocab_size}")


def _fresh_state(cfg: RunConfig) -> dict[str, Any]:
    import jax

    from laggrow import model, train

    params = model.init_params(cfg.model, jax.random.key(cfg.train.seed))
    return train.init_state(params, train.make_optimizer(cfg.train))


def execute_run(
    run: PreparedRun,
    *,
    until: int | None = None,
    on_record: Callable[[dict], None] | None = None,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Train (or continue) the prepared run to `train.steps`, or stop after step `until` with a
    checkpoint. Returns the summary (also written to summary.json when the run is complete); a
    run already finished is not trained again and its summary is returned as it is, with
    `"already_finished": True`. `resume_command` is what an interruption tells the user to
    run (default: `laggrow train OUT/config.json --out OUT --resume`)."""
    from laggrow import interrupt

    check_until(run.config, until)
    out = run.out
    # every process has read `out` as it was (prepare_run) before process 0 writes to it
    hosts.barrier(f"train {out} prepared")
    created = not out.exists()
    # Signals are deferred from here: the lock is taken, files are written and the loop saves
    # and stops cleanly on the first Ctrl-C instead of dying in the middle of an Orbax save.
    with interrupt.deferred(), store.DirLock(out, "--out"):
        if not run.resume and (out / store.CONFIG_FILE).is_file():
            # another process made the run between prepare_run and this lock
            raise LaggrowError(f"--out {out}: already holds a run (expected a new or empty directory)")
        summary = run_dir.read_summary(out, "--out")
        if run.resume and summary is not None and summary["complete"] is True:
            return {**summary, "already_finished": True}
        try:
            return _train(run, until, on_record, resume_command or run_dir.resume_command(out))
        except BaseException:
            if not run.resume and not _has_checkpoint(out) and hosts.is_primary():
                _discard(out, created)
            raise


def _has_checkpoint(out: Path) -> bool:
    """Whether `out` holds a checkpoint worth keeping: one whose manifest was written, i.e. whose
    save finished. A step directory without one (a save that failed after Orbax renamed it) could
    not be restored anyway."""
    directory = out / store.CHECKPOINT_DIR
    return directory.is_dir() and any(p.name.isdigit() and (p / store.CHECKPOINT_MANIFEST).is_file()
                                      for p in directory.iterdir())


def _discard(out: Path, created: bool) -> None:
    """Remove what a fresh run wrote before it had anything worth keeping."""
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    _remove_tree(out / store.CHECKPOINT_DIR)
    if created:  # the directory is ours too; the lock file goes with it (its fd stays valid)
        (out / store.LOCK_FILE).unlink(missing_ok=True)
        if not any(out.iterdir()):
            out.rmdir()


def _remove_tree(path: Path, settle: float = 0.25, patience: float = 5.0) -> None:
    """rmtree that also removes what arrives after it: when a save fails (a full disk), Orbax
    reports the first failed write while tensorstore's threads are still finishing others, and
    they create files in the checkpoint's temporary directory for a moment after it was removed.
    Done once the path has stayed absent for `settle` seconds (at most `patience` in all)."""
    deadline = time.monotonic() + patience
    gone_since: float | None = None
    while time.monotonic() < deadline:
        shutil.rmtree(path, ignore_errors=True)
        now = time.monotonic()
        if path.exists():
            gone_since = None
        elif gone_since is None:
            gone_since = now
        elif now - gone_since >= settle:
            return
        time.sleep(0.05)


def _train(run: PreparedRun, until: int | None, on_record: Callable[[dict], None] | None,
           resume_command: str) -> dict[str, Any]:
    import jax

    from laggrow import checkpoint, interrupt, mesh, train

    cfg, out, data = run.config, run.out, run.dataset
    layout = run.layout
    if not (out / store.CONFIG_FILE).is_file():  # a resumed run's was checked equal by prepare_run
        store.write_json(out / store.CONFIG_FILE, formats.with_version(cfg.to_dict()))
    if not (out / store.DATA_FILE).is_file():  # a run made before data.json existed gets one now
        store.write_json(out / store.DATA_FILE, data_fingerprint(data, cfg.data))
    if isinstance(data.tokenizer, BPETokenizer) and not (out / store.TOKENIZER_FILE).is_file():
        store.write_file(out / store.TOKENIZER_FILE, data.tokenizer.save)

    metrics_path = out / store.METRICS_FILE
    ckpt = checkpoint.Checkpointer(out, fingerprint=cfg.to_dict())
    try:
        seconds_before = 0.0
        # Batch i of this run is batch `offset + i` of its seed's stream: 0 for a run trained from
        # scratch, the source's position for a grown run (laggrow grow records it), so a grown
        # model continues the stream its source stopped at instead of re-reading its first batches.
        offset = 0
        if run.resume and ckpt.latest_step() is not None:
            # The newest intact checkpoint; damaged newer ones are reported and removed. Its
            # target is abstract: initialising a model just for its shapes costs compiles. It is
            # restored straight onto this run's layout, whichever layout saved it.
            target = mesh.abstract_state(jax.eval_shape(lambda: _fresh_state(cfg)), layout, stacked=False)
            state, position = ckpt.restore(target, remove_damaged=True)
            # an imported model (parameters alone) starts with a fresh optimizer state
            state = checkpoint.complete_state(state, train.make_optimizer(cfg.train))
            offset = position - int(state["step"])
            seconds_before = float(ckpt.restored_meta.get("seconds") or 0.0)
        else:
            state = _fresh_state(cfg)
        start = int(state["step"])
        # Records past the checkpoint were made by the interrupted process; they are made again.
        records = store.read_jsonl(metrics_path, "training records", repair=True)
        kept = [r for r in records if _record_step(r, metrics_path) <= start]
        if kept != records:
            store.rewrite_jsonl(metrics_path, kept)

        stop = cfg.train.steps if until is None else min(until, cfg.train.steps)
        eval_batches = data.eval_batches(cfg.data.eval_batches, cfg.data.eval_batch_size)

        def next_batch(position: int):
            return data.train_batch(offset + position, cfg.train.batch_size, cfg.train.seed)

        def record(r: dict) -> None:
            store.append_jsonl(metrics_path, [r])
            if on_record is not None:
                on_record(r)

        t0 = time.perf_counter()

        def save(s: dict) -> None:
            ckpt.save(s, data_position=offset + int(s["step"]),
                      meta={"seconds": seconds_before + time.perf_counter() - t0})

        try:
            state, history = train.train_loop(state, cfg.model, cfg.train, next_batch, eval_batches,
                                              on_record=record, on_checkpoint=save, stop_at=stop,
                                              layout=layout)
        except train.Diverged as err:
            last = ckpt.latest_step()
            good = f"step {last} in {out}" if last is not None else "none (nothing is kept)"
            raise LaggrowError(f"{err}; last good checkpoint: {good} (lower train.lr?)") from None
        except interrupt.Interrupted:
            raise interrupt.Interrupted(f"saved step {ckpt.latest_step()} in {out}; continue with: "
                                        f"{resume_command}") from None
    finally:
        ckpt.close()

    hosts.barrier(f"train {out} records")  # process 0 has written them
    records = store.read_jsonl(metrics_path, "training records")
    evals = [r for r in records if "eval_loss" in r]
    tokens_per_step, flops_per_step = cfg.model.train_step_compute(cfg.train.batch_size, cfg.data.seq_len)
    steps = int(state["step"])
    seconds = seconds_before + history.seconds
    # The steady rate of this process (its first step's compile left out); a process that ran
    # fewer than two steps falls back to the whole run's average.
    rate = history.steady_tokens_per_second
    if rate is None:
        rate = steps * tokens_per_step / max(seconds, 1e-9)
    summary = {
        "steps": steps,
        "complete": steps >= cfg.train.steps,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "params": cfg.model.n_params(),
        "tokens": steps * tokens_per_step,
        "flops": float(steps * flops_per_step),
        "seconds": seconds,
        "tokens_per_second": rate,
        "heldout_unigram_entropy": data.unigram_entropy(),
        # where this process trained (not what: the records are the same on every layout)
        "layout": layout.record(),
    }
    if summary["complete"]:
        store.write_json(out / store.SUMMARY_FILE, summary)
    return summary


def _record_step(record: dict, path: Path) -> int:
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise LaggrowError(f"{path}: a record without an integer step ({str(record)[:60]}); "
                           "expected the training records (is the file damaged?)")
    return step
