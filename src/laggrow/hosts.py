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
- **A bounded join**: a process waits at most `join_timeout` seconds (`--join-timeout`,
  `LAGGROW_JOIN_TIMEOUT`, default 120) for the others; `initialize` then hands one line to its
  caller's `on_stuck` (JAX itself would abort the process with a C++ stack trace after its own
  `initialization_timeout`, which is set later so that laggrow's line comes first).

Importing this module does not import jax (`laggrow --help` stays instant); a single process
never touches jax.distributed and every function here is then free. A program that imports
laggrow as a library and calls `jax.distributed.initialize` itself is recognised too.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from laggrow.errors import LaggrowError

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "LAGGROW_NUM_PROCESSES"
PROCESS_ID_ENV = "LAGGROW_PROCESS_ID"
JOIN_TIMEOUT_ENV = "LAGGROW_JOIN_TIMEOUT"
JOIN_TIMEOUT = 120  # seconds a process waits for the others to join, by default
# JAX's own deadline comes this much later, so that laggrow's line is what a user sees
_JAX_GRACE = 60


@dataclass(frozen=True)
class Cluster:
    """How to join: an explicit coordinator, or `auto` (JAX's own detection), or none; and how
    long to wait for the other processes."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    join_timeout: int = JOIN_TIMEOUT

    @property
    def wanted(self) -> bool:
        return self.auto or self.coordinator is not None


def cluster_from(coordinator: str | None, num_processes: int | None, process_id: int | None,
                 auto: bool, environ: dict[str, str] | None = None, join_timeout: int | None = None) -> Cluster:
    """The cluster asked for by flags, falling back to the environment, checked: an explicit
    coordinator needs a port others can join, the number of processes and this process's id, in
    range; the wait to join is a positive number of seconds."""
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get(COORDINATOR_ENV) or None
    # what the user set, by the name they set it under (a flag, or its environment variable)
    given = [flag if value is not None else name for flag, value, name in
             (("--num-processes", num_processes, NUM_PROCESSES_ENV), ("--process-id", process_id, PROCESS_ID_ENV))
             if value is not None or env.get(name)]
    num_processes = num_processes if num_processes is not None else _env_int(env, NUM_PROCESSES_ENV)
    process_id = process_id if process_id is not None else _env_int(env, PROCESS_ID_ENV)
    join_timeout = join_timeout if join_timeout is not None else _env_int(env, JOIN_TIMEOUT_ENV)
    join_timeout = JOIN_TIMEOUT if join_timeout is None else join_timeout
    if join_timeout < 1:
        raise LaggrowError(f"--join-timeout: expected a number of seconds >= 1, got {join_timeout}")
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            if not auto:
                raise LaggrowError(f"{'/'.join(given)}: given without --coordinator (expected "
                                   f"--coordinator HOST:PORT or {COORDINATOR_ENV}, or --distributed)")
        return Cluster(None, num_processes, process_id, auto, join_timeout)
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise LaggrowError(f"--coordinator: expected HOST:PORT (process 0's address), got {coordinator!r}")
    if not 1 <= int(port) <= 65535:
        # port 0 would have process 0 listen on a port the system picks, which no other process knows
        raise LaggrowError(f"--coordinator {coordinator}: expected a port in 1..65535 that every process can "
                           f"join, got {port}")
    if num_processes is None or process_id is None:
        raise LaggrowError(f"--coordinator {coordinator}: expected --num-processes and --process-id too "
                           f"(or {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV})")
    if num_processes < 1:
        raise LaggrowError(f"--num-processes: expected an integer >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise LaggrowError(f"--process-id: expected an integer in [0, {num_processes - 1}], got {process_id}")
    return Cluster(coordinator, num_processes, process_id, auto, join_timeout)


def _env_int(env, name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaggrowError(f"{name}: expected an integer, got {value!r}") from None


def initialize(cluster: Cluster, on_stuck: Callable[[LaggrowError], None] | None = None) -> None:
    """Join the cluster (a no-op for a single process). Must run before any other use of jax.

    If the processes have not all joined after `cluster.join_timeout` seconds, `on_stuck` is
    called (on another thread: this one is blocked inside JAX) with the line that says so; the
    command line prints it and ends the process. Without `on_stuck`, JAX's own deadline (the
    same number of seconds) ends the wait."""
    if not cluster.wanted or cluster.num_processes == 1:
        return
    import jax

    timeout = cluster.join_timeout
    watchdog = None
    if on_stuck is not None:
        where = f"--coordinator {cluster.coordinator}" if cluster.coordinator is not None else "--distributed"
        count = f"all {cluster.num_processes} processes" if cluster.num_processes else "all processes"
        stuck = LaggrowError(f"{where}: {count} had not joined after {timeout} s (expected every process started "
                             "with the same coordinator and number of processes, each with its own process id, "
                             "and process 0 reachable there; a longer wait: --join-timeout SECONDS)")
        watchdog = threading.Timer(timeout, on_stuck, args=(stuck,))
        watchdog.daemon = True
        watchdog.start()
        timeout += _JAX_GRACE
    try:
        if cluster.coordinator is not None:
            jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id,
                                       initialization_timeout=timeout)
        else:  # SLURM, Open MPI, Cloud TPU: JAX reads their environment
            jax.distributed.initialize(initialization_timeout=timeout)
    except (RuntimeError, ValueError) as err:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LaggrowError(f"jax.distributed: cannot join the cluster ({text}); expected every process "
                           "started with the same coordinator and its own process id") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()


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


def require_one_process(what: str, instead: str | None = None) -> None:
    """One line if this command runs on several processes but is `what`, which does not spread
    across them (yet): refused at its start, on every process, before anything is read or
    written, rather than left to hang at its first meeting point. `instead`: what to run there."""
    if process_count() > 1:
        raise LaggrowError(f"{what}: runs in one process only (expected no --coordinator, --distributed or "
                           f"{COORDINATOR_ENV}" + (f"; on several processes, {instead})" if instead else ")"))


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op for one process). `name` must be
    the same on every process and different from the previous barrier's."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def meet(name: str, timeout: float) -> bool:
    """Whether every process arrives at meeting point `name` within `timeout` seconds (True for
    one process). Unlike `barrier`, a process that never comes is not waited for: this goes
    through the coordination service's key-value barrier, not a collective, and a timeout
    leaves the cluster usable. For a failing process asking whether the others failed too."""
    if process_count() == 1:
        return True
    from jax._src import distributed  # the client jax.distributed.initialize made; no public handle

    client = distributed.global_state.client
    if client is None:
        return False
    try:
        client.wait_at_barrier(name, max(1, int(timeout * 1000)))
    except Exception:  # noqa: BLE001 - DEADLINE_EXCEEDED, or a service already gone: not everyone came
        return False
    return True


def agree(value: int) -> int:
    """Process 0's `value`, on every process (a name every process must spell the same)."""
    if process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))
