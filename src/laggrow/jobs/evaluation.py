"""`laggrow eval`: the held-out loss of a run's model on any corpus, in nats per token and bits
per byte, with standard errors over windows.

Any finished run (trained, grown by `laggrow grow`, a stacking method's model) is evaluated on the
held-out split of its own corpus or of another one (`--set data.corpus=...`, and any other
`data.KEY`), tokenized with the run's own tokenizer (`run_dir.load_tokenizer`: its model reads no
other, so `data.tokenizer` and `data.bpe_vocab_size` are the run's and cannot be set), so that
models of one tokenizer (an imported model and its grown versions) compare on one text.

Which windows (`on`), all `data.eval_batches` x `data.eval_batch_size` windows of `data.seq_len`
+ 1 tokens, evenly spaced, as `data.Dataset` lays them out:

- `heldout` (the default): over the whole held-out stream, what a training run evaluates; on the
  run's own corpus and data settings this is the run's recorded `final_eval_loss` (tested).
- `selection` or `test`: over one half of the held-out documents (`data.split_heldout`), what a
  pool or stack chooses on, and what it reports (a stacking method's `final_eval_loss` is its
  test set's loss).

Bits per byte: a window of T + 1 tokens is scored on its last T tokens, whose text is exactly the
bytes those tokens stand for (`data.predicted_bytes`: the tokenizer's bytes per token, summed). Over
n windows, bits per byte = sum of the windows' nats / (ln 2 x sum of their bytes) = nats per token
x tokens / (ln 2 x bytes). Its standard error is that of a ratio of two means over windows (the
delta method): sqrt(sum (a_i - r b_i)^2 / (n (n - 1))) / mean(b), a_i a window's bits, b_i its
bytes, r the ratio; with a byte tokenizer (b_i = T) it is the loss's SE / ln 2.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from laggrow.config import run_config_from_dict
from laggrow.config_engine import apply_overrides
from laggrow.errors import LaggrowError
from laggrow.resources import check_eval_fits
from laggrow.run_dir import load_run, load_tokenizer, read_run_config, require_finished

SETS = ("heldout", "selection", "test")
SET_NAMES = {"heldout": "the whole held-out stream", "selection": "the held-out selection set",
             "test": "the held-out test set"}
# the tokenizer is the run's: what would make another one cannot be set
TOKENIZER_KEYS = ("tokenizer", "bpe_vocab_size")


def data_config(run_cfg, overrides: list[str] | None):
    """The run's data section with `--set data.KEY=VALUE` overrides, checked (one line for another
    section, an unknown key, a bad value, a tokenizer key, a sequence longer than the model's)."""
    raw = apply_overrides({"data": dataclasses.asdict(run_cfg.data)}, overrides)
    if set(raw) != {"data"}:
        other = sorted(set(raw) - {"data"})[0]
        raise LaggrowError(f"--set {other}.…: only data.KEY=VALUE here (expected data.corpus, data.seq_len, "
                           "data.eval_batches, ...; the run's model is what is evaluated)")
    for key in TOKENIZER_KEYS:
        if raw["data"].get(key) != getattr(run_cfg.data, key):
            raise LaggrowError(f"data.{key}: the run's tokenizer is used, {getattr(run_cfg.data, key)!r}; "
                               "expected no override (its model reads no other tokens)")
    cfg = run_config_from_dict({"model": run_cfg.model.to_dict(), "data": raw["data"],
                                "train": run_cfg.train.to_dict()}, where="--set", check_fits=False)
    check_eval_fits(cfg)
    return cfg.data


def evaluate_run(run_dir: Path, overrides: list[str] | None = None, on: str = "heldout") -> dict:
    """The loss of the finished run in `run_dir` on the windows `on` (module docstring) of its
    corpus, or of the data `overrides` name: nats per token and bits per byte, each with its SE
    over windows, the counts, and every window's loss (7 significant digits, for paired
    comparisons of models on the same windows)."""
    from laggrow import train
    from laggrow.data import load_dataset, predicted_bytes

    if on not in SETS:
        raise LaggrowError(f"--on: expected one of {', '.join(SETS)}, got {on!r}")
    run_dir = Path(run_dir)
    run_cfg = read_run_config(run_dir)
    data_cfg = data_config(run_cfg, overrides)
    require_finished(run_dir)
    tokenizer = load_tokenizer(run_dir, run_cfg)
    dataset = load_dataset(data_cfg, tokenizer=tokenizer)
    n, b = data_cfg.eval_batches, data_cfg.eval_batch_size
    windows = {"heldout": dataset.eval_batches, "selection": dataset.selection_batches,
               "test": dataset.test_batches}[on](n, b)
    run = load_run(run_dir)
    losses = train.evaluate_windows(run.params, run_cfg.model, windows)
    nbytes = predicted_bytes(tokenizer, windows).reshape(-1).astype(np.float64)
    loss, loss_se = train.mean_and_se(losses)
    bpb, bpb_se = bits_per_byte(losses, nbytes, data_cfg.seq_len)
    return {
        "run": str(run_dir),
        "corpus": str(data_cfg.corpus),
        "set": on,
        "set_name": SET_NAMES[on],
        "windows": int(losses.size),
        "seq_len": data_cfg.seq_len,
        "tokens": int(losses.size * data_cfg.seq_len),
        "bytes": int(nbytes.sum()),
        "loss": loss,
        "loss_se": loss_se,
        "bits_per_byte": bpb,
        "bits_per_byte_se": bpb_se,
        "tokenizer": run_cfg.data.tokenizer,
        "window_losses": [float(f"{x:.7g}") for x in losses],
    }


def bits_per_byte(window_losses: np.ndarray, window_bytes: np.ndarray, seq_len: int) -> tuple[float, float | None]:
    """Bits per byte of windows scored on `seq_len` tokens each (mean nats per token
    `window_losses`, `window_bytes` bytes of text), and its standard error over windows (module
    docstring; None for one window). NaN when the windows hold no bytes."""
    bits = np.asarray(window_losses, np.float64) * seq_len / math.log(2)
    nbytes = np.asarray(window_bytes, np.float64)
    if nbytes.sum() <= 0:
        return math.nan, None
    ratio = float(bits.sum() / nbytes.sum())
    if bits.size < 2:
        return ratio, None
    residual = bits - ratio * nbytes
    return ratio, float(np.sqrt((residual**2).sum() / (bits.size * (bits.size - 1))) / nbytes.mean())
