"""Orbax checkpoints of a train state: params, optimizer state, step and data position.

Pitfalls handled here (DESIGN.md): Orbax saves asynchronously, so every save is awaited before we
return; paths must be absolute; a step directory only counts once Orbax has finalised it, so an
interrupted save is never taken for a complete checkpoint; restoring needs a target tree so that
optax's named-tuple states keep their types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from laggrow.store import CHECKPOINT_DIR


class Checkpointer:
    """Numbered checkpoints of one run in `run_dir/checkpoints/<step>`."""

    def __init__(self, run_dir: Path, max_to_keep: int = 2):
        self.directory = (Path(run_dir) / CHECKPOINT_DIR).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def save(self, state: dict[str, Any], data_position: int, step: int | None = None) -> None:
        """Save and wait. `step` numbers the checkpoint (default: the state's own step)."""
        step = int(state["step"]) if step is None else step
        item = dict(state, data_position=np.asarray(data_position, np.int64))
        self._manager.save(step, args=ocp.args.StandardSave(item), force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, target: dict[str, Any], step: int | None = None) -> tuple[dict[str, Any], int]:
        """Restore into the structure of `target` (a state or its shapes); returns
        (state, data_position)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        abstract = dict(target, data_position=np.zeros((), np.int64))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
        item = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        position = int(item.pop("data_position"))
        return item, position

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def has_checkpoint(run_dir: Path) -> bool:
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return False
    with Checkpointer(run_dir) as ckpt:
        return ckpt.latest_step() is not None
