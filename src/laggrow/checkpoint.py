"""Orbax checkpoints of a train state (params, optimizer state, step, data position), each
vouched for by a manifest of what Orbax wrote.

Pitfalls handled here (docs/design.md): Orbax saves asynchronously, so every save is awaited
before we return; paths must be absolute; a step directory only counts once Orbax has finalised
it, so an interrupted save is never taken for a complete checkpoint; restoring needs a target
tree so that optax's named-tuple states keep their types.

Integrity: once Orbax has finalised step N, `store.CHECKPOINT_MANIFEST` is written into its
directory with the sha256 and size of every file there and a fingerprint of the config the
state belongs to. A restore verifies the manifest first. A checkpoint with no manifest (killed
between Orbax's finalise and the manifest), a file changed, truncated or missing, or a manifest
for another config is damaged: the restore warns in one line and falls back to the previous
checkpoint (max_to_keep=2 keeps one), or raises one line when none is intact. Orbax would
otherwise restore flipped bytes silently, and training would go on from them.

Only a failed verification makes a checkpoint damaged. One whose manifest verified but that Orbax
cannot restore failed for a reason outside it (memory, a read error, devices unlike the ones it
was saved from): the restore stops with one line, marks nothing and removes nothing, since the
same checkpoint restores once the machine allows it.

A checkpoint may hold the parameters alone (`save_params`: `laggrow import`, whose model has no
optimizer state, in the dtype the weights came in). Restoring one returns a state without
`opt_state`, its parameters cast to the target's dtype; `complete_state` gives it the fresh
optimizer state a model trained from there starts with.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from laggrow import faults, hosts, mesh, store
from laggrow.errors import LaggrowError


def warn(message: str) -> None:
    """A warning is one line on stderr (a progress display, if any, prints it above itself)."""
    print(" ".join(message.split("\n")), file=sys.stderr, flush=True)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


class CheckpointDamaged(LaggrowError):
    """A checkpoint failed its verification (or none is intact): its bytes are not what was saved."""


class CheckpointUnreadable(LaggrowError):
    """A checkpoint verified intact that Orbax could not restore: the machine's fault, not the file's."""


class Checkpointer:
    """Numbered checkpoints in `run_dir/checkpoints/<step>`.

    `fingerprint` (any JSON value; for a run its RunConfig dict) is recorded with each save and
    compared on restore, so a checkpoint is never restored into a config it was not saved for.
    `read_only` opens someone else's checkpoints (a source run): nothing is created or cleaned.
    """

    def __init__(self, run_dir: Path, max_to_keep: int = 2, *, fingerprint: Any = None,
                 read_only: bool = False):
        self.directory = (Path(run_dir) / store.CHECKPOINT_DIR).absolute()
        self.fingerprint = None if fingerprint is None else store.fingerprint(fingerprint)
        self.read_only = read_only
        self.restored_step: int | None = None  # the step the last restore returned
        self.restored_meta: dict[str, Any] = {}  # and the `meta` saved with it
        self.damaged: dict[int, str] = {}  # step -> why, found by the last restore
        self._failed_save = False  # a save raised: closing must not raise its echo over it
        # A save killed mid-write leaves an Orbax temporary directory; only a writer, which
        # holds the run's lock, may remove it. (Orbax's own read_only option logs warnings.)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               cleanup_tmp_directories=not read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ---- saving --------------------------------------------------------------------------------

    def save(self, state: dict[str, Any], data_position: int, step: int | None = None, *,
             meta: dict[str, Any] | None = None) -> None:
        """Save, wait until Orbax has finalised it, then write its manifest. `step` numbers the
        checkpoint (default: the state's own step); `meta` (small JSON: a run's elapsed seconds)
        is kept in the manifest and returned by a restore as `restored_meta`."""
        if self.read_only:
            raise RuntimeError(f"{self.directory}: opened read-only")  # a bug, not the user's
        step = int(state["step"]) if step is None else int(step)
        item = dict(mesh.global_arrays(state), data_position=np.asarray(data_position, np.int64))
        try:
            self._manager.save(step, args=ocp.args.StandardSave(item), force=True)
            faults.point("save", step)
            self._manager.wait_until_finished()
        except Exception as err:
            self._failed_save = True
            reason = io_error_reason(err)
            if reason is None:
                raise
            raise LaggrowError(f"checkpoint {step} in {self.directory}: cannot be written ({reason}); "
                               "expected a writable directory with free space") from None
        faults.point("finalised", step)
        step_dir = self.step_dir(step)
        if hosts.is_primary():  # every process wrote its shards; process 0 vouches for them
            store.write_json(step_dir / store.CHECKPOINT_MANIFEST, {
                "step": step,
                "config": self.fingerprint,
                "meta": meta or {},
                "files": store.file_digests(step_dir, skip=(store.CHECKPOINT_MANIFEST,)),
            })
        faults.point("saved", step)

    def save_params(self, params: dict[str, Any], data_position: int = 0, step: int = 0, *,
                    meta: dict[str, Any] | None = None) -> None:
        """Save parameters alone (no optimizer state), as they are (numpy arrays of any float
        dtype); a restore casts them to its target's dtype and leaves `opt_state` out."""
        state = {"params": params, "step": np.asarray(step, np.int32)}
        with _numpy_saved_in_place():
            self.save(state, data_position=data_position, step=step, meta={**(meta or {}), PARAMS_ONLY: True})

    # ---- reading -------------------------------------------------------------------------------

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def steps(self) -> list[int]:
        """Finalised steps, oldest first (intact or not: see `verify`)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalised step, not yet verified."""
        return self._manager.latest_step()

    def verify(self, step: int) -> str | None:
        """None if checkpoint `step` is intact, else why it is not (a few words)."""
        step_dir = self.step_dir(step)
        manifest_file = step_dir / store.CHECKPOINT_MANIFEST
        if not manifest_file.is_file():
            return "no manifest: its save did not finish"
        try:
            manifest = store.read_json(manifest_file, "checkpoint manifest")
        except LaggrowError:
            return f"{store.CHECKPOINT_MANIFEST} unreadable"
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return f"{store.CHECKPOINT_MANIFEST} malformed"
        saved_for = manifest.get("config")
        if self.fingerprint is not None and saved_for is not None and saved_for != self.fingerprint:
            return f"saved for another config than {store.CONFIG_FILE} (was it replaced?)"
        actual = store.file_digests(step_dir, skip=(store.CHECKPOINT_MANIFEST,))
        for name, want in sorted(files.items()):
            got = actual.get(name)
            if got is None:
                return f"{name} missing"
            if not isinstance(want, dict) or got["size"] != want.get("size"):
                return f"{name} is {got['size']} bytes, expected {want.get('size') if isinstance(want, dict) else '?'}"
            if got["sha256"] != want.get("sha256"):
                return f"{name} changed (sha256 differs)"
        return None

    def restore(self, target: dict[str, Any], step: int | None = None, *,
                remove_damaged: bool = False) -> tuple[dict[str, Any], int]:
        """Restore into the structure of `target` (a state or its shapes); returns
        (state, data_position), and sets `restored_step`.

        Without `step`: the newest intact checkpoint, each damaged newer one reported in one
        line on stderr. With `step`: that checkpoint, or one line if it is damaged. With
        `remove_damaged` (a writer holding the run's lock), the damaged newer step directories
        are deleted, so that Orbax can save those steps again."""
        steps = sorted(self.steps(), reverse=True) if step is None else [int(step)]
        if not steps:
            raise LaggrowError(f"{self.directory}: no finished checkpoint (expected one saved by laggrow)")
        if step is not None and step not in self.steps():
            raise LaggrowError(f"{self.directory}: no finished checkpoint at step {step} "
                               f"(have {', '.join(map(str, self.steps())) or 'none'})")
        self.damaged = {}
        for i, candidate in enumerate(steps):
            reason = self.verify(candidate)
            if reason is None:
                meta = store.read_json(self.step_dir(candidate) / store.CHECKPOINT_MANIFEST, "checkpoint manifest")
                restored_meta = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
                part = target
                if restored_meta.get(PARAMS_ONLY) is True:  # laggrow import: no optimizer state saved
                    part = {"params": target["params"], "step": target["step"]}
                try:
                    item = self._restore_step(candidate, part)
                except Exception as err:  # verified, so not the file's fault: nothing is marked or removed
                    raise CheckpointUnreadable(
                        f"checkpoint {candidate} in {self.directory}: verified intact, but cannot be restored on this "
                        f"machine ({_one_line(err)}); nothing was removed (expected the memory and devices to "
                        "restore it: run again once the machine allows it)") from None
            if reason is None:
                if remove_damaged and self.damaged:
                    self._remove(sorted(self.damaged))
                self.restored_step = candidate
                self.restored_meta = restored_meta
                position = int(item.pop("data_position"))
                return item, position
            self.damaged[candidate] = reason
            if step is not None:
                raise CheckpointDamaged(f"checkpoint {candidate} in {self.directory} is damaged ({reason}); "
                                        "expected an intact checkpoint")
            if i + 1 < len(steps):
                warn(f"warning: checkpoint {candidate} in {self.directory} is damaged ({reason}); "
                     f"falling back to checkpoint {steps[i + 1]}")
        found = "; ".join(f"checkpoint {s}: {r}" for s, r in self.damaged.items())
        raise CheckpointDamaged(f"{self.directory}: no intact checkpoint ({found}); expected at least one "
                           "complete checkpoint (train again into a new directory)")

    def _restore_step(self, step: int, target: dict[str, Any]) -> dict[str, Any]:
        # A leaf with no sharding of its own goes to this process's first device: left to
        # Orbax, it would take the sharding it was saved with, which names devices that another
        # layout or another process does not have.
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def placed(leaf: Any) -> jax.ShapeDtypeStruct:
            struct = ocp.utils.to_shape_dtype_struct(leaf)
            if getattr(struct, "sharding", None) is None:
                struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=local)
            return struct

        abstract = jax.tree.map(placed, target)
        abstract["data_position"] = ocp.utils.to_shape_dtype_struct(np.zeros((), np.int64))
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def discard(self, steps: list[int]) -> None:
        """Delete these step directories (a writer's damaged ones), so their steps can be saved again."""
        if self.read_only:
            raise RuntimeError(f"{self.directory}: opened read-only")  # a bug, not the user's
        self._remove(steps)

    def _remove(self, steps: list[int]) -> None:
        for step in steps if hosts.is_primary() else []:
            shutil.rmtree(self.step_dir(step), ignore_errors=True)
        self._manager.reload()

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the last save and close. After a failed save, Orbax raises that save's error
        again here: it has been reported already, and must not replace that report."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        except Exception:
            if not self._failed_save:
                raise

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _numpy_saved_in_place():
    """Orbax deep-copies every numpy array it saves (so that the caller may change it while the
    save runs in the background); `save` waits for the save before it returns, so the copy of a
    model's weights (`laggrow import`: about as large as the model) is spared while this is open."""
    from orbax.checkpoint import type_handlers

    previous = type_handlers.get_type_handler(np.ndarray)
    try:
        in_place = type_handlers.NumpyHandler(deepcopy_host_arrays=False)
    except TypeError:  # an Orbax without the option: its copy it is
        yield
        return
    type_handlers.register_type_handler(np.ndarray, in_place, override=True)
    try:
        yield
    finally:
        type_handlers.register_type_handler(np.ndarray, previous, override=True)


# A manifest's `meta` key marking a checkpoint of parameters alone (Checkpointer.save_params).
PARAMS_ONLY = "params_only"


def complete_state(state: dict[str, Any], optimizer) -> dict[str, Any]:
    """A restored state with an optimizer state: its own, or (a checkpoint of parameters alone)
    the optimizer's fresh one, as a model trained from there starts with."""
    if "opt_state" in state:
        return state
    return {**state, "opt_state": optimizer.init(state["params"])}


# tensorstore reports an OS error as a payload of its status, rendered `[os_error_code='28']`
# into the ValueError / RuntimeError it raises: the one structured field it exposes to Python.
_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")


def io_error_reason(err: BaseException) -> str | None:
    """The OS's reason ('no space left on device') when a failed save is a failed write, else None
    (a bug, to be raised as it is): an OSError in the exception's chain (Orbax writes its metadata
    with Python's I/O), or the OS error code that tensorstore attaches to a failed write."""
    seen: set[int] = set()
    chain: BaseException | None = err
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno is not None:
            return os.strerror(chain.errno).lower()
        code = _OS_ERROR_CODE.search(str(chain)) if isinstance(chain, ValueError | RuntimeError) else None
        if code:
            return os.strerror(int(code.group(1))).lower()
        chain = chain.__cause__ or chain.__context__
    return None


def has_checkpoint(run_dir: Path) -> bool:
    directory = Path(run_dir) / store.CHECKPOINT_DIR
    if not directory.is_dir():
        return False
    with Checkpointer(run_dir, read_only=True) as ckpt:
        return ckpt.latest_step() is not None
