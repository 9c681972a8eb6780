"""Several processes, one study: `jax.distributed`, which process writes, and meeting points.

A pool or a training run can span hosts: every process runs the same command on the same
arguments (SPMD), each driving its own devices, and JAX joins their devices into one global
mesh (laggrow.mesh). What the processes must agree on is here:

- **Joining** (`initialize`): from the command line's `--coordinator`, `--num-processes`,
  `--process-id`, else JAX's own variables (`JAX_COORDINATOR_ADDRESS`, with
  `LAGGROW_NUM_PROCESSES` / `LAGGROW_PROCESS_ID`), else, with `--distributed` alone, what
  `jax.distributed.initialize()` detects by itself (SLURM, Open MPI, a Cloud TPU VM slice).
- **Who writes**: process 0 alone writes records, tables, figures and locks (`is_primary`;
  laggrow.store asks it before every write). Orbax checkpoints are the exception: every process
  takes part in a save, writing its own shards, as Orbax requires.
- **Meeting points** (`barrier`): a process that reads back what process 0 wrote in the same
  command first waits for it there.

Importing this module does not import jax (`laggrow --help` stays instant); a single process
never touches jax.distributed and every function here is then free. A program that imports
laggrow as a library and calls `jax.distributed.initialize` itself is recognised too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from laggrow.errors import LaggrowError

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "LAGGROW_NUM_PROCESSES"
PROCESS_ID_ENV = "LAGGROW_PROCESS_ID"

@dataclass(frozen=True)
class Cluster:
    """How to join: an explicit coordinator, or `auto` (JAX's own detection), or none."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    @property
    def wanted(self) -> bool:
        return self.auto or self.coordinator is not None


def cluster_from(coordinator: str | None, num_processes: int | None, process_id: int | None,
                 auto: bool, environ: dict[str, str] | None = None) -> Cluster:
    """The cluster asked for by flags, falling back to the environment, checked: an explicit
    coordinator needs the number of processes and this process's id, in range."""
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get(COORDINATOR_ENV) or None
    num_processes = num_processes if num_processes is not None else _env_int(env, NUM_PROCESSES_ENV)
    process_id = process_id if process_id is not None else _env_int(env, PROCESS_ID_ENV)
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            if not auto:
                raise LaggrowError("--num-processes/--process-id: given without --coordinator (expected "
                                   f"--coordinator HOST:PORT or {COORDINATOR_ENV}, or --distributed)")
        return Cluster(None, num_processes, process_id, auto)
    if ":" not in coordinator or not coordinator.rsplit(":", 1)[1].isdigit():
        raise LaggrowError(f"--coordinator: expected HOST:PORT (process 0's address), got {coordinator!r}")
    if num_processes is None or process_id is None:
        raise LaggrowError(f"--coordinator {coordinator}: expected --num-processes and --process-id too "
                           f"(or {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV})")
    if num_processes < 1:
        raise LaggrowError(f"--num-processes: expected an integer >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise LaggrowError(f"--process-id: expected an integer in [0, {num_processes - 1}], got {process_id}")
    return Cluster(coordinator, num_processes, process_id, auto)


def _env_int(env, name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaggrowError(f"{name}: expected an integer, got {value!r}") from None


def initialize(cluster: Cluster) -> None:
    """Join the cluster (a no-op for a single process). Must run before any other use of jax."""
    if not cluster.wanted or cluster.num_processes == 1:
        return
    import jax

    try:
        if cluster.coordinator is not None:
            jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id)
        else:
            jax.distributed.initialize()  # SLURM, Open MPI, Cloud TPU: JAX reads their environment
    except (RuntimeError, ValueError) as err:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LaggrowError(f"jax.distributed: cannot join the cluster ({text}); expected every process "
                           "started with the same coordinator and its own process id") from None


def _current() -> tuple[int, int]:
    """(process index, count), as jax.distributed says once this process joined a cluster
    (through `initialize`, or a program using laggrow as a library that joined it itself); a
    process that never imported jax is alone, (0, 1), and is not made to import it."""
    if "jax" in sys.modules:
        import jax

        if jax.distributed.is_initialized():
            return jax.process_index(), jax.process_count()
    return 0, 1


def process_index() -> int:
    return _current()[0]


def process_count() -> int:
    return _current()[1]


def is_primary() -> bool:
    """Whether this process writes laggrow's records (process 0, or the only one)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op for one process). `name` must be
    the same on every process and different from the previous barrier's."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
    """Process 0's `value`, on every process (a name every process must spell the same)."""
    if process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))
