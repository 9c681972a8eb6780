"""`laggrow export RUN --out HF_DIR`: a laggrow model of the Llama family as a Hugging Face model
directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

What RUN may be: a finished run (trained, resumed), a fresh one (`laggrow grow`, `laggrow
import`), a stacking method's model (`STACK/models/<method>-seed<s>`), or a pool with
`--candidate N` (candidate N of pool.json, at T: train-final must have finished it).

What HF_DIR holds (names in `laggrow.store`): config.json (`llama`, or `qwen2` for q/k/v biases),
model.safetensors (or shards of at most --shard-size and their index), tokenizer.json and
tokenizer_config.json (see `laggrow.hf.tokenizer`), generation_config.json, and
laggrow-export.json (what it was made from). It is written in a staging directory renamed at the
end; an existing HF_DIR is replaced only when it is an earlier laggrow export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import hosts, run_dir, store
from laggrow.config import RunConfig
from laggrow.errors import LaggrowError
from laggrow.hf import convert
from laggrow.hf.tokenizer import byte_tokenizer, fast_tokenizer_config
from laggrow.hf.weights import numpy_dtype, parse_size, write_weights

DTYPE_CHOICES = ("float32", "bfloat16", "float16")
DEFAULT_SHARD_SIZE = "5GB"


@dataclass
class Source:
    """What is exported: the model's config, where its tokenizer is, and how to read its params."""

    path: Path
    config: RunConfig
    tokenizer_dir: Path  # the run whose tokenizer files the model reads (a pool's source)
    candidate: int | None = None  # a pool's candidate

    def describe(self) -> dict[str, Any]:
        return {"source": str(self.path), **({"candidate": self.candidate} if self.candidate is not None else {})}


def resolve_source(path: Path, candidate: int | None) -> Source:
    """Check what `path` is (and that --candidate fits it) without loading any weights."""
    path = Path(path).absolute()
    if (path / store.POOL_FILE).is_file():
        return _pool_source(path, candidate)
    if (path / store.STACK_CONFIG_FILE).is_file():
        raise LaggrowError(f"RUN {path}: a stacking directory (laggrow stack); expected one of its models, "
                           f"{path / store.MODELS_DIR}/<method>-seed<s>")
    if (path / store.EXPERIMENT_FILE).is_file():
        raise LaggrowError(f"RUN {path}: an experiment directory (laggrow run); expected its base run "
                           f"({path / store.BASE_DIR}) or its pool with --candidate ({path / store.POOL_DIR})")
    if candidate is not None:
        raise LaggrowError(f"--candidate: {path} is a run, not a pool (expected --candidate only with a pool "
                           "directory)")
    cfg = run_dir.read_run_config(path, what="RUN")
    run_dir.require_finished(path, what="RUN")
    return Source(path=path, config=cfg, tokenizer_dir=path)


def _pool_source(path: Path, candidate: int | None) -> Source:
    from laggrow.pool import records
    from laggrow.pool.trainer import read_pool_dir

    _, meta, target = read_pool_dir(path)
    n = len(meta["candidates"])
    if candidate is None:
        raise LaggrowError(f"RUN {path}: a pool; expected --candidate N, one of its {n} candidates (0 to {n - 1}, "
                           f"the candidate column of final.json)")
    if not 0 <= candidate < n:
        raise LaggrowError(f"--candidate: expected a candidate of {path} in [0, {n - 1}], got {candidate}")
    if not (path / store.FINAL_FILE).is_file():
        raise LaggrowError(f"RUN {path}: train-final has not finished (no {store.FINAL_FILE}); expected a pool "
                           f"trained to T (laggrow train-final {path})")
    selected = records.read_selection(path / store.FINAL_STATE / store.SELECTION_FILE, n)
    if candidate not in selected:
        raise LaggrowError(f"--candidate {candidate}: not trained to T in {path} (train-final continued "
                           f"{', '.join(map(str, selected))})")
    final = store.read_json(path / store.FINAL_FILE, "ranking at T")
    row = next((r for r in final.get("candidates", []) if isinstance(r, dict) and r.get("candidate") == candidate),
               None)
    if row is not None and row.get("diverged") is True:
        raise LaggrowError(f"--candidate {candidate}: diverged in {path} (expected a candidate that trained to T; "
                           "its state is frozen at its last finite step)")
    return Source(path=path, config=target, tokenizer_dir=Path(meta["source"]), candidate=candidate)


def load_params(source: Source) -> dict:
    """The float32 parameters of the model (a pool: the candidate's at T), as numpy arrays."""
    import jax

    from laggrow import mesh

    if source.candidate is None:
        return jax.tree.map(np.asarray, run_dir.load_run(source.path, what="RUN").params)
    from laggrow.checkpoint import Checkpointer
    from laggrow.pool import records
    from laggrow.pool.spec import pool_config_from_dict
    from laggrow.pool.trainer import abstract_pool_state

    meta = records.read_pool_record(source.path)
    pool = pool_config_from_dict(meta["pool"], where=str(source.path / store.POOL_FILE))
    selected = records.read_selection(source.path / store.FINAL_STATE / store.SELECTION_FILE, len(meta["candidates"]))
    with Checkpointer(source.path / store.FINAL_STATE, read_only=True) as ckpt:
        state, _ = ckpt.restore(abstract_pool_state(source.config, len(selected)), step=pool.final_steps)
    at = selected.index(source.candidate)
    return jax.tree.map(lambda x: np.asarray(mesh.to_host(x))[at], state["params"])


def tokenizer_outputs(source: Source) -> tuple[dict[str, Any], int | None, int | None]:
    """{file name: text, or a path to copy} of the exported tokenizer, and its BOS and EOS ids."""
    from laggrow.data import HFTokenizer

    cfg = source.config
    kind = cfg.data.tokenizer
    if kind == "hf":
        tok = HFTokenizer.load(source.tokenizer_dir)
        return ({store.TOKENIZER_FILE: source.tokenizer_dir / store.TOKENIZER_FILE,
                 store.TOKENIZER_CONFIG_FILE: source.tokenizer_dir / store.TOKENIZER_CONFIG_FILE},
                tok.bos_id, tok.eos_id)
    config = store.dumps(fast_tokenizer_config(cfg)) + "\n"
    if kind == "bpe":
        run_dir.load_tokenizer(source.tokenizer_dir, cfg)  # one line if it is missing or unreadable
        return {store.TOKENIZER_FILE: source.tokenizer_dir / store.TOKENIZER_FILE,
                store.TOKENIZER_CONFIG_FILE: config}, None, None
    return {store.TOKENIZER_FILE: byte_tokenizer().to_str(), store.TOKENIZER_CONFIG_FILE: config}, None, None


def check_target(out: Path, source: Path) -> bool:
    """Whether `out` exists (and is an earlier laggrow export, to be replaced); one line when it
    exists and is anything else, or lies inside a laggrow run."""
    out = Path(out).absolute()
    store.check_not_staged(out, "--out")
    store.check_outside_runs(out, "--out")
    if not (out.exists() or out.is_symlink()):
        store.check_writable_target(out, "--out")
        return False
    if out.is_dir() and (out / store.EXPORT_FILE).is_file():
        if out.resolve() == Path(source).resolve():
            raise LaggrowError(f"--out {out}: the model being exported (expected another directory)")
        store.check_writable_target(out, "--out")
        return True
    raise LaggrowError(f"--out {out}: exists and is not a laggrow export (expected a new directory, or one "
                       f"laggrow export wrote, with {store.EXPORT_FILE})")


def export_model(path: Path, out: Path, dtype: str = "float32", shard_size: str | None = None,
                 candidate: int | None = None) -> dict[str, Any]:
    """Export the model in `path` to `out`; returns laggrow-export.json's record."""
    hosts.require_one_process("laggrow export")
    out = Path(out).absolute()
    if dtype not in DTYPE_CHOICES:
        raise LaggrowError(f"--dtype: expected one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    shard_bytes = parse_size(shard_size or DEFAULT_SHARD_SIZE)
    source = resolve_source(path, candidate)
    model = source.config.model
    if model.arch != "llama":
        raise LaggrowError(f"RUN {source.path}: model.arch is '{model.arch}' (expected 'llama': laggrow export writes "
                           "the Llama family; a gpt model has no Hugging Face architecture of the same computation)")
    replace = check_target(out, source.path)
    tokenizer, bos_id, eos_id = tokenizer_outputs(source)
    params = load_params(source)
    flat = {}
    for t in convert.tensors(model):
        node = params
        for part in t.leaf.split("/"):
            node = node[part]
        flat[t.name] = (t, node)
    np_dtype = numpy_dtype(dtype)

    def make(name: str):
        t, leaf = flat[name]
        return convert.to_hf(leaf if t.layer is None else leaf[t.layer], t).astype(np_dtype)

    tensors = [(name, int(np.prod(t.shape)) * np_dtype.itemsize, lambda name=name: make(name))
               for name, (t, _) in flat.items()]
    record = {**source.describe(), "dtype": dtype, "shard_size": shard_bytes, "tokenizer": source.config.data.tokenizer,
              "model": model.to_dict(), "tensors": len(tensors), "params": model.n_params()}
    with store.staged_dir(out, "--out", replace=replace) as tmp:
        record["files"] = write_weights(tmp, tensors, shard_bytes)
        store.write_json(tmp / store.CONFIG_FILE, convert.hf_config(model, dtype, bos_id, eos_id))
        store.write_json(tmp / store.HF_GENERATION_FILE, {"bos_token_id": bos_id, "eos_token_id": eos_id})
        for name, content in tokenizer.items():
            if isinstance(content, Path):
                store.copy_file(content, tmp / name)
            else:
                store.write_text(tmp / name, content)
        store.write_json(tmp / store.EXPORT_FILE, record)
    return record
