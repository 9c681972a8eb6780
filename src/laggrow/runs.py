"""Reading a run directory back (names in `laggrow.store`): its config, and its latest
checkpoint restored with the optimizer state.

Growth, probing and the CLI read runs through `load_run`, which fails with one line for a path
that is missing, is not a laggrow run, or is damaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow import store
from laggrow.config import RunConfig, run_config_from_dict
from laggrow.errors import LaggrowError


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
    return run_config_from_dict(raw, where=str(config_file))


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
