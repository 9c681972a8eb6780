"""Reading a run directory back (names in `laggrow.store`): its config, its summary, its latest
checkpoint restored with the optimizer state, and its dataset checked against the data it was
trained on.

Growth, probing and the CLI read runs through `load_run`, which fails with one line for a path
that is missing, is not a laggrow run, is damaged, or (by default) has not finished training:
growing from a run paused by `--until` or killed mid-way would silently grow the wrong model.
The source's dataset is loaded through `load_source_dataset`, which refuses a corpus that has
changed since the source was trained. A run's tokenizer is loaded in one place, `load_tokenizer`,
without reading any corpus (sampling, evaluating on another corpus, a source's dataset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laggrow import store
from laggrow.config import SECTIONS, RunConfig, run_config_from_dict
from laggrow.errors import LaggrowError

if TYPE_CHECKING:
    from laggrow.data import Dataset


@dataclass
class LoadedRun:
    path: Path
    config: RunConfig
    state: dict[str, Any]  # {"params", "opt_state", "step"}
    data_position: int

    @property
    def params(self) -> dict:
        return self.state["params"]


def read_run_config(path: Path, what: str = "run") -> RunConfig:
    path = Path(path)
    if not path.exists():
        raise LaggrowError(f"{what} {path}: does not exist (expected a laggrow run directory)")
    config_file = path / store.CONFIG_FILE
    if not path.is_dir() or not config_file.is_file():
        raise LaggrowError(f"{what} {path}: not a laggrow run (expected a directory with {store.CONFIG_FILE})")
    raw = store.read_json(config_file, f"{what}'s run config")
    for section, value in raw.items():
        if section in SECTIONS and not isinstance(value, dict):
            raise LaggrowError(f"{config_file}: section '{section}' is a {type(value).__name__} "
                               f"(expected a mapping of {section} keys; is the file damaged?)")
    # read back, not trained here: whether it fits this machine is for the command that trains it
    return run_config_from_dict(raw, where=str(config_file), check_fits=False)


def resume_command(path: Path) -> str:
    """How a user continues the unfinished run in `path`."""
    path = Path(path)
    return f"laggrow train {path / store.CONFIG_FILE} --out {path} --resume"


def read_summary(path: Path, what: str = "run") -> dict | None:
    """The run's summary.json (None if it has none); one line if it is damaged."""
    summary_file = Path(path) / store.SUMMARY_FILE
    if not summary_file.is_file():
        return None
    summary = store.read_json(summary_file, f"{what}'s summary")
    return store.require_keys(summary, ("complete", "steps"), summary_file, f"{what}'s summary")


def require_finished(path: Path, what: str = "run") -> dict | None:
    """The summary of a finished run; one line for a run that has not finished training. A run
    freshly made by `laggrow grow` or `laggrow import` (never trained since) is a whole model
    too: None."""
    path = Path(path)
    if (path / store.POOL_FILE).is_file():  # it holds a config.json too: say what it is
        raise LaggrowError(f"{what} {path}: a pool directory (laggrow probe), not a training run; expected a "
                           "finished laggrow train run, such as the pool's source)")
    summary = read_summary(path, what)
    if summary is None and is_fresh(path):
        return None
    if summary is None or summary["complete"] is not True:
        why = f"no {store.SUMMARY_FILE}" if summary is None else f"{store.SUMMARY_FILE} says step {summary['steps']}"
        raise LaggrowError(f"{what} {path}: is unfinished ({why}; expected a finished laggrow train run; "
                           f"continue it with {resume_command(path)})")
    return summary


def is_fresh(path: Path) -> bool:
    """Whether `path` is a model made by `laggrow grow` or `laggrow import` and not trained since
    (no training records yet): whole as it is, and `laggrow train --resume` trains it further."""
    path = Path(path)
    made = (path / store.GROWTH_FILE).is_file() or (path / store.IMPORT_FILE).is_file()
    return made and not (path / store.METRICS_FILE).is_file()


def load_tokenizer(run_dir: Path, cfg: RunConfig | None = None):
    """The tokenizer of a run (or of a pool: its source's), without reading its corpus: bytes, the
    run's BPE (tokenizer.json), or an imported model's own (tokenizer.json and tokenizer_config.json,
    `data.tokenizer: hf`). The one place a run's tokenizer is loaded. One line when the run is not
    a laggrow run, its tokenizer file is missing or unreadable, or the tokenizer has more tokens
    than the model has embeddings (fewer is allowed: an imported model may pad its vocabulary).

    What callers use of a tokenizer: `vocab_size`, `encode(text)` (int32 ids, no special tokens
    added), `decode(ids)`, `encode_documents(docs)` (a corpus's stream) and `token_bytes()` ((V,)
    bytes of text per token id, for eval's bits per byte); an `hf` one also `eos_id` and `bos_id`."""
    from laggrow.data import BPETokenizer, ByteTokenizer, HFTokenizer

    run_dir = Path(run_dir)
    if (run_dir / store.POOL_FILE).is_file():  # a pool trains on its source's data: its tokenizer
        meta = store.read_json(run_dir / store.POOL_FILE, "pool record")
        if not isinstance(meta.get("source"), str):
            raise LaggrowError(f"{run_dir / store.POOL_FILE}: no source (expected the pool record written by "
                               "laggrow probe; is it damaged?)")
        run_dir = Path(meta["source"])
        cfg = None
    cfg = cfg if cfg is not None else read_run_config(run_dir)
    if cfg.data.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif cfg.data.tokenizer == "hf":
        tokenizer = HFTokenizer.load(run_dir)
    else:
        file = run_dir / store.TOKENIZER_FILE
        if not file.is_file():
            raise LaggrowError(f"{file}: not found (expected the run's BPE tokenizer, data.tokenizer "
                               f"{cfg.data.tokenizer!r})")
        tokenizer = BPETokenizer.load(file)  # one line for a file `tokenizers` cannot read
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise LaggrowError(f"run {run_dir}: its tokenizer has {tokenizer.vocab_size} tokens, more than its model's "
                           f"model.vocab_size={cfg.model.vocab_size}; expected at most that many (is the run damaged?)")
    return tokenizer


def load_run(path: Path, what: str = "run", *, require_finished: bool = True) -> LoadedRun:
    """Config and checkpoint of a run, restored with its optimizer state. A finished run is
    restored at its final step (a damaged final checkpoint is one line, not a silent fallback
    to an earlier model); otherwise the newest intact checkpoint."""
    import jax

    from laggrow import checkpoint, model, train

    path = Path(path)
    cfg = read_run_config(path, what)
    summary = _require_finished(path, what) if require_finished else read_summary(path, what)
    if not checkpoint.has_checkpoint(path):
        raise LaggrowError(f"{what} {path}: has no finished checkpoint (expected a trained laggrow run)")
    optimizer = train.make_optimizer(cfg.train)
    target = jax.eval_shape(lambda p: train.init_state(p, optimizer), model.param_shapes(cfg.model))
    final_step = int(summary["steps"]) if summary is not None and summary.get("complete") is True else None
    with checkpoint.Checkpointer(path, fingerprint=cfg.to_dict(), read_only=True) as ckpt:
        state, position = ckpt.restore(target, step=final_step)
    state = checkpoint.complete_state(state, optimizer)  # an imported model has no optimizer state
    return LoadedRun(path=path, config=cfg, state=state, data_position=position)


_require_finished = require_finished  # the parameter of load_run shadows the function's name


def source_record(path: Path, what: str = "source") -> dict[str, Any]:
    """What identifies a whole model used as a source, read without jax: its path, where it came
    from (`import`: laggrow import, with import.json's model_type and the sha256 of every weight
    file; `grow`; `train`), the step of the checkpoint a source is restored at (a finished run's
    last, else the newest), a fingerprint of that checkpoint (the sha256 of its manifest's file
    digests: any changed weight changes it) and whether it holds AdamW moments (an import holds
    parameters alone). One line for a run with no such checkpoint."""
    import hashlib
    import json

    from laggrow.checkpoint import PARAMS_ONLY

    path = Path(path)
    summary = read_summary(path, what)
    ckpt_dir = path / store.CHECKPOINT_DIR
    steps = sorted(int(d.name) for d in ckpt_dir.iterdir() if d.name.isdigit()) if ckpt_dir.is_dir() else []
    step = int(summary["steps"]) if summary is not None and summary.get("complete") is True else (
        steps[-1] if steps else None)
    manifest_file = ckpt_dir / str(step) / store.CHECKPOINT_MANIFEST
    if step is None or not manifest_file.is_file():
        raise LaggrowError(f"{what} {path}: has no finished checkpoint{'' if step is None else f' at step {step}'} "
                           "(expected a trained, grown or imported laggrow run)")
    manifest = store.read_json(manifest_file, f"{what}'s checkpoint manifest")
    files = store.require_keys(manifest, ("files",), manifest_file, f"{what}'s checkpoint manifest")["files"]
    meta = manifest.get("meta") if isinstance(manifest.get("meta"), dict) else {}
    record: dict[str, Any] = {
        "path": str(path.absolute()), "checkpoint_step": step,
        "fingerprint": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        "optimizer_moments": meta.get(PARAMS_ONLY) is not True}
    if (path / store.IMPORT_FILE).is_file():
        imported = store.read_json(path / store.IMPORT_FILE, f"{what}'s import record")
        record.update(origin="import", model_type=imported.get("model_type"), imported_from=imported.get("source"),
                      weights=imported.get("weights"))
    else:
        record["origin"] = "grow" if (path / store.GROWTH_FILE).is_file() and summary is None else "train"
    return record


def check_data(run_dir: Path, cfg: RunConfig, dataset: Dataset) -> None:
    """One line if `dataset` is not the data the run in `run_dir` started with (its data.json).
    A run without data.json (made before laggrow recorded it) is accepted."""
    from laggrow.data import data_fingerprint, fingerprint_differences

    recorded_file = Path(run_dir) / store.DATA_FILE
    if not recorded_file.is_file():
        return
    recorded = store.read_json(recorded_file, "data fingerprint")
    changed = fingerprint_differences(recorded, data_fingerprint(dataset, cfg.data))
    if changed:
        raise LaggrowError(f"corpus {cfg.data.corpus} changed since the run started in {run_dir} "
                           f"({'; '.join(changed[:2])}); expected the same data")


def load_source_dataset(run: LoadedRun | Path, cfg: RunConfig | None = None) -> Dataset:
    """The dataset a source run was trained on (its corpus and split, its tokenizer from
    `load_tokenizer`), checked against the run's data.json. Pass a LoadedRun, or a run directory
    (and its config, if read)."""
    from laggrow.data import load_dataset

    if isinstance(run, LoadedRun):
        path, cfg = run.path, run.config
    else:
        path = Path(run)
        cfg = cfg if cfg is not None else read_run_config(path)
    dataset = load_dataset(cfg.data, tokenizer=load_tokenizer(path, cfg))
    check_data(path, cfg, dataset)
    return dataset
