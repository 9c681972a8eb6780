"""`laggrow import HF_DIR --out RUN`: a local Hugging Face model directory as a laggrow run.

    laggrow import ~/models/SmolLM2-135M --out runs/smol --set data.corpus=notes.txt

What the run holds (names in `laggrow.store`):

- config.json: the model (`arch: llama`, from HF's config.json), `data` with `tokenizer: hf` and
  the user's `--set data.*` (the corpus it evaluates and trains on; kjv by default), and `train`
  with `--set train.*` (what `laggrow train RUN/config.json --out RUN --resume` continues
  pretraining with, and what grown runs and pools inherit).
- tokenizer.json, tokenizer_config.json: the model's own tokenizer (`data.HFTokenizer`).
- data.json: the fingerprint of the corpus tokenized by it, as every run has.
- checkpoints/0: the parameters alone, in the dtype asked (`--dtype keep` stores them as they came),
  at step 0 and data position 0: a pool or a grown run continues the stream from its start.
- import.json: the origin (directory, model_type, its config.json, the sha256 of every weight
  file), the dtype, the tokenizer's document separator, and that laggrow trained nothing.

No summary.json: that file says laggrow trained the run to its end. An imported run is a whole
model as a freshly grown one is (`run_dir.is_fresh`): every command takes it as a source, and
`laggrow train --resume` trains it further.

Every check runs before anything is written, and the run is assembled in a staging directory
renamed at the end. Host memory: each parameter leaf is allocated once in its final dtype and
filled tensor by tensor from the memory-mapped files, so about one copy of the weights is held
(and Orbax's buffers while it writes them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import formats, hosts, store
from laggrow.config import DataConfig, ModelConfig, RunConfig, run_config_from_dict
from laggrow.config_engine import apply_overrides, shown
from laggrow.data import HFTokenizer, data_fingerprint, load_dataset, special_token
from laggrow.errors import LaggrowError
from laggrow.growth.layout import unflatten
from laggrow.hf import convert
from laggrow.hf.weights import WeightFiles, numpy_dtype

DTYPE_CHOICES = ("keep", "float32", "bfloat16")
SEPARATOR_RULES = {"eos": "every document followed by the EOS token", "bos": "every document after the BOS token",
                   "text": "a blank line of text between documents (the tokenizer has no EOS or BOS)"}
# model keys an import may set: how the model is computed, never what it is
SETTABLE_MODEL_KEYS = ("dtype", *ModelConfig.COMPUTE_KEYS)


def read_hf_config(hf_dir: Path) -> tuple[dict, ModelConfig]:
    """The directory's config.json and the laggrow model it describes (one line otherwise)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        what = "does not exist" if not hf_dir.exists() else "is not a directory"
        raise LaggrowError(f"HF_DIR {hf_dir}: {what} (expected a Hugging Face model directory)")
    config_file = hf_dir / store.CONFIG_FILE
    hf = store.read_json(config_file, "Hugging Face model config")
    return hf, convert.model_config(hf, str(config_file))


def tokenizer_files(hf_dir: Path, hf: dict) -> tuple[HFTokenizer, dict, bool]:
    """The model's tokenizer, its tokenizer_config.json (with eos_token filled in from
    config.json's eos_token_id when it names none), and whether that was needed."""
    from laggrow.data import read_hf_tokenizer

    hf_dir = Path(hf_dir)
    config_file = hf_dir / store.TOKENIZER_CONFIG_FILE
    config = store.read_json(config_file, "tokenizer config") if config_file.is_file() else {}
    tok_file = hf_dir / store.TOKENIZER_FILE
    raw = read_hf_tokenizer(tok_file, "model's tokenizer")
    filled = False
    for key in ("eos_token", "bos_token"):
        if special_token(config, key) is None and isinstance(hf.get(f"{key}_id"), int):
            text = raw.id_to_token(hf[f"{key}_id"])
            if text is not None:
                config = {**config, key: text}
                filled = True
    return HFTokenizer.from_files(tok_file, config, source=config_file), config, filled


def import_config(model: ModelConfig, overrides: list[str] | None, where: str) -> RunConfig:
    """The imported run's config: the model as config.json says, the data and training the
    user sets (`--set data.*`, `train.*`), the tokenizer the model's own."""
    raw = apply_overrides({"model": {}, "data": {}, "train": {}}, overrides)
    for key in raw["model"]:
        if key not in SETTABLE_MODEL_KEYS:
            raise LaggrowError(f"--set model.{key}: an imported model is what {where} says (expected only "
                               f"model.{', model.'.join(SETTABLE_MODEL_KEYS)}; grow it with laggrow grow)")
    if raw["data"].get("tokenizer", "hf") != "hf":
        raise LaggrowError(f"--set data.tokenizer={shown(raw['data']['tokenizer'])}: an imported model reads its own "
                           "tokenizer (expected 'hf', or no data.tokenizer)")
    if "mesh" in raw:
        raise LaggrowError("--set mesh.…: laggrow import trains nothing (expected model.*, data.* or train.*)")
    data = {"tokenizer": "hf", **raw["data"]}
    seq_len = data.get("seq_len")
    if isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > model.max_seq_len:
        raise LaggrowError(f"data.seq_len: expected at most the model's max_position_embeddings "
                           f"({model.max_seq_len}, {where}), got {seq_len}")
    data.setdefault("seq_len", min(DataConfig.seq_len, model.max_seq_len))
    # read back, not trained here: whether it fits is for the command that trains it
    return run_config_from_dict({"model": {**model.to_dict(), **raw["model"]}, "data": data, "train": raw["train"]},
                                where="import", check_fits=False)


def read_params(weights: WeightFiles, cfg: ModelConfig, dtype: str) -> tuple[dict, dict[str, str]]:
    """laggrow's parameter tree, each leaf allocated once in its dtype and filled tensor by
    tensor (the `keep` dtype is each leaf's stored one, which all of its tensors must share)."""
    shapes = convert.leaf_shapes(cfg)
    by_leaf: dict[str, list[convert.Tensor]] = {}
    for t in convert.tensors(cfg):
        by_leaf.setdefault(t.leaf, []).append(t)
    flat, dtypes = {}, {}
    for leaf, parts in by_leaf.items():
        stored = {weights.dtype(t.name) for t in parts}
        if dtype == "keep" and len(stored) > 1:
            raise LaggrowError(f"{weights.dir}: the tensors of {parts[0].name.split('.')[-2]} come in "
                               f"{' and '.join(sorted(stored))} (expected one dtype, or --dtype float32 / bfloat16)")
        dtypes[leaf] = stored.pop() if dtype == "keep" else dtype
        out = np.empty(shapes[leaf], numpy_dtype(dtypes[leaf]))
        for t in parts:
            value = convert.to_leaf(weights.get(t.name), t, shapes[leaf])
            if t.layer is None:
                out[...] = value.astype(out.dtype, copy=False)
            else:
                out[t.layer] = value.astype(out.dtype, copy=False)
        flat[leaf] = out
    return unflatten(flat), dtypes


def import_model(hf_dir: Path, out: Path, dtype: str = "keep", overrides: list[str] | None = None,
                 on_event: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Import `hf_dir` as a laggrow run in `out`; returns the import.json record."""
    from laggrow.checkpoint import Checkpointer

    hosts.require_one_process("laggrow import")
    say = on_event or (lambda _: None)
    hf_dir, out = Path(hf_dir).absolute(), Path(out).absolute()
    started = time.perf_counter()
    store.check_new_dir(out, "--out")
    store.check_not_staged(out, "--out")
    store.check_outside_runs(out, "--out")
    if dtype not in DTYPE_CHOICES:
        raise LaggrowError(f"--dtype: expected one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    hf, model = read_hf_config(hf_dir)
    config_file = hf_dir / store.CONFIG_FILE
    cfg = import_config(model, overrides, str(config_file))
    weights = WeightFiles(hf_dir)
    weights.check(model, config_file)
    tokenizer, tok_config, filled = tokenizer_files(hf_dir, hf)
    if tokenizer.vocab_size > model.vocab_size:
        raise LaggrowError(f"{hf_dir / store.TOKENIZER_FILE}: makes ids up to {tokenizer.vocab_size - 1}, beyond "
                           f"config.json's vocab_size {model.vocab_size} (expected the model's own tokenizer)")
    say(f"corpus {cfg.data.corpus}: tokenizing with the model's tokenizer")
    dataset = load_dataset(cfg.data, tokenizer=tokenizer)
    say(f"weights: {len(weights.files)} file(s), hashing")
    digests = weights.digests()
    kind, sep_id = tokenizer.separator
    record = {
        "source": str(hf_dir), "model_type": hf["model_type"], "hf_config": hf, "weights": digests,
        "dtype": {"asked": dtype},
        "tokenizer": {"separator": kind, "token_id": sep_id, "rule": SEPARATOR_RULES[kind],
                      "tokenizer_config_filled_from_config_json": filled},
        "params": model.n_params(), "data_position": 0, "trained_steps": 0,
        "note": "weights imported from Hugging Face safetensors; laggrow trained nothing (no summary.json until "
                "laggrow train --resume trains it)",
    }
    with store.staged_dir(out) as tmp:
        store.write_json(tmp / store.CONFIG_FILE, formats.with_version(cfg.to_dict()))
        store.copy_file(hf_dir / store.TOKENIZER_FILE, tmp / store.TOKENIZER_FILE)
        if filled or not (hf_dir / store.TOKENIZER_CONFIG_FILE).is_file():
            store.write_json(tmp / store.TOKENIZER_CONFIG_FILE, tok_config)
        else:
            store.copy_file(hf_dir / store.TOKENIZER_CONFIG_FILE, tmp / store.TOKENIZER_CONFIG_FILE)
        store.write_json(tmp / store.DATA_FILE, data_fingerprint(dataset, cfg.data))
        say("weights: reading and converting")
        params, dtypes = read_params(weights, model, dtype)
        weights.close()
        record["dtype"]["stored"] = dict(sorted(dtypes.items()))
        with Checkpointer(tmp, fingerprint=cfg.to_dict()) as ckpt:
            ckpt.save_params(params, data_position=0, step=0, meta={"seconds": 0.0})
        del params
        record["seconds"] = time.perf_counter() - started
        store.write_json(tmp / store.IMPORT_FILE, record)
    return record
