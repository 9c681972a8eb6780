"""Run directories: what a laggrow run leaves on disk and how to read it back.

    RUN/config.json     the full RunConfig (model, data, train)
    RUN/tokenizer.json  the BPE tokenizer, when data.tokenizer is bpe
    RUN/checkpoints/    Orbax checkpoints (params, optimizer state, step, data position)
    RUN/metrics.jsonl   one record per logged step
    RUN/summary.json    written last: its presence means the run finished

Growth, probing and the CLI read runs through `load_run`, which fails with one line for a path
that is missing or is not a laggrow run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow.config import RunConfig, run_config_from_json
from laggrow.errors import LaggrowError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


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
    config_file = path / CONFIG_FILE
    if not path.is_dir() or not config_file.is_file():
        raise LaggrowError(f"{what} {path}: not a laggrow run (expected a directory with {CONFIG_FILE})")
    try:
        return run_config_from_json(config_file)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LaggrowError(f"{what} {config_file}: malformed JSON (expected a laggrow run config)") from None


def load_run(path: Path, what: str = "run") -> LoadedRun:
    """Config and latest finished checkpoint of a run, restored with its optimizer state."""
    import jax

    from laggrow import checkpoint, model, train

    cfg = read_run_config(path, what)
    if not checkpoint.has_checkpoint(path):
        raise LaggrowError(f"{what} {path}: has no finished checkpoint (expected a trained laggrow run)")
    optimizer = train.make_optimizer(cfg.train)
    target = jax.eval_shape(lambda p: train.init_state(p, optimizer), model.param_shapes(cfg.model))
    with checkpoint.Checkpointer(path) as ckpt:
        state, position = ckpt.restore(target)
    return LoadedRun(path=Path(path), config=cfg, state=state, data_position=position)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temporary directory beside `out`, renamed to `out` only if the block succeeds, so a
    failure (bad input found late, a crash) leaves nothing half-written at `out`."""
    out = Path(out).absolute()
    if out.exists():
        raise LaggrowError(f"--out {out}: already exists (expected a new directory)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
