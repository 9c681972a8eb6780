"""A training run on disk: validate, set up or resume the run directory, train, checkpoint.

`laggrow train` is a thin shell around `prepare_run` + `execute_run`. Everything that can be
wrong with the user's input (config, corpus, output directory) is found by `prepare_run` before
anything is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow import runs, store
from laggrow.config import RunConfig
from laggrow.data import BPETokenizer, Dataset, load_dataset
from laggrow.errors import LaggrowError


@dataclass
class PreparedRun:
    config: RunConfig
    out: Path
    dataset: Dataset
    resume: bool  # True: continue from the checkpoint in `out`


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            diffs.append(f"{prefix}{key}: {vb!r} there, {va!r} here")
    return diffs


def prepare_run(cfg: RunConfig, out: Path, resume: bool) -> PreparedRun:
    """Load the corpus, fill the vocabulary from the tokenizer and check `out` against `cfg`."""
    out = Path(out).absolute()
    existing = out / store.CONFIG_FILE
    if out.exists() and not existing.is_file() and any(out.iterdir()):
        raise LaggrowError(f"--out {out}: not empty and not a laggrow run (expected a new or empty directory)")
    if resume and not existing.is_file():
        raise LaggrowError(f"--resume: {out} holds no run to resume (expected a directory made by laggrow train)")

    dataset = load_dataset(cfg.data, out if existing.is_file() else None)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=dataset.vocab_size))
    cfg.validate()

    if existing.is_file():
        previous = runs.read_run_config(out, what="--out")
        diffs = _differences(cfg.to_dict(), previous.to_dict())
        if diffs:
            raise LaggrowError(f"--out {out}: holds a different run ({'; '.join(diffs[:3])})")
        finished = (out / store.SUMMARY_FILE).is_file()
        if not resume:
            state = "a finished" if finished else "an unfinished"
            hint = "choose another --out" if finished else "pass --resume to continue it"
            raise LaggrowError(f"--out {out}: already holds {state} run of this config ({hint})")
    return PreparedRun(config=cfg, out=out, dataset=dataset, resume=resume)


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
) -> dict[str, Any]:
    """Train (or continue) the prepared run to `train.steps`, or stop after step `until` with a
    checkpoint. Returns the summary (also written to summary.json when the run is complete)."""
    from laggrow import checkpoint, train

    cfg, out, data = run.config, run.out, run.dataset
    out.mkdir(parents=True, exist_ok=True)
    store.write_json(out / store.CONFIG_FILE, cfg.to_dict())
    if isinstance(data.tokenizer, BPETokenizer) and not (out / store.TOKENIZER_FILE).is_file():
        data.tokenizer.save(out / store.TOKENIZER_FILE)

    metrics_path = out / store.METRICS_FILE
    ckpt = checkpoint.Checkpointer(out)
    state = _fresh_state(cfg)
    if run.resume and ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)
    start = int(state["step"])
    # Records past the checkpoint were made by the interrupted process; they are made again.
    store.rewrite_jsonl(metrics_path, [r for r in store.read_jsonl(metrics_path, "training records", repair=True)
                                       if r["step"] <= start])

    stop = cfg.train.steps if until is None else min(until, cfg.train.steps)
    eval_batches = data.eval_batches(cfg.data.eval_batches, cfg.data.eval_batch_size)

    def next_batch(position: int):
        return data.train_batch(position, cfg.train.batch_size, cfg.train.seed)

    def record(r: dict) -> None:
        store.append_jsonl(metrics_path, [r])
        if on_record is not None:
            on_record(r)

    t0 = time.perf_counter()
    try:
        state, history = train.train_loop(
            state, cfg.model, cfg.train, next_batch, eval_batches,
            on_record=record, on_checkpoint=lambda s: ckpt.save(s, data_position=int(s["step"])),
            stop_at=stop,
        )
    finally:
        ckpt.close()
    seconds = time.perf_counter() - t0

    records = store.read_jsonl(metrics_path, "training records")
    evals = [r for r in records if "eval_loss" in r]
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    steps = int(state["step"])
    summary = {
        "steps": steps,
        "complete": steps >= cfg.train.steps,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "params": cfg.model.n_params(),
        "tokens": steps * tokens_per_step,
        "flops": float(steps * tokens_per_step * cfg.model.train_flops_per_token(cfg.data.seq_len)),
        "seconds": seconds,
        "tokens_per_second": (steps - start) * tokens_per_step / max(seconds, 1e-9),
        "heldout_unigram_entropy": data.unigram_entropy(),
    }
    if summary["complete"]:
        store.write_json(out / store.SUMMARY_FILE, summary)
    return summary
