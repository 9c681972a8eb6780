"""The `laggrow` command line: a Typer app with one thin command per verb.

The verbs live in `laggrow.cli.<verb>`, each a thin shell over library code that registers itself
on the app; `laggrow.cli.errors` is the one error boundary and `laggrow.cli.progress` the display. Heavy imports
(jax, orbax, matplotlib) happen inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
import sys
from typing import Annotated

import typer

from laggrow.cli.errors import EXIT_USER_ERROR, end_one_of_several, exit_now, user_errors

app = typer.Typer(
    name="laggrow",
    help="Grow Transformer LMs and choose the growth strategy with Landscape-Aware Growing (LAG).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    coordinator: Annotated[str | None, typer.Option(
        "--coordinator", help="Several processes: process 0's HOST:PORT (env JAX_COORDINATOR_ADDRESS).")] = None,
    num_processes: Annotated[int | None, typer.Option(
        "--num-processes", help="Several processes: how many (env LAGGROW_NUM_PROCESSES).")] = None,
    process_id: Annotated[int | None, typer.Option(
        "--process-id", help="Several processes: this one's index, 0 first (env LAGGROW_PROCESS_ID).")] = None,
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Several processes, found by jax.distributed itself (SLURM, Open MPI, "
        "a Cloud TPU VM slice).")] = False,
    join_timeout: Annotated[int | None, typer.Option(
        "--join-timeout", metavar="SECONDS", help="Several processes: how long each waits for the others to "
        "join before it gives up (env LAGGROW_JOIN_TIMEOUT) [default: 120].")] = None,
) -> None:
    """Grow Transformer LMs and choose the growth strategy with Landscape-Aware Growing (LAG)."""
    _join(coordinator, num_processes, process_id, distributed, join_timeout)


@user_errors
def _join(coordinator: str | None, num_processes: int | None, process_id: int | None, distributed: bool,
          join_timeout: int | None) -> None:
    """Join the other processes of a multi-host command (laggrow.hosts); the others print only
    their errors and warnings, process 0 everything, and none prints Gloo's connection lines."""
    from laggrow import hosts

    cluster = hosts.cluster_from(coordinator, num_processes, process_id, distributed, join_timeout=join_timeout)
    prefix = f"[process {cluster.process_id}] " if cluster.process_id else ""
    hosts.initialize(cluster, on_stuck=lambda err: exit_now(f"{prefix}error: {err}", EXIT_USER_ERROR))
    if hosts.process_count() == 1:
        return
    prefix = f"[process {hosts.process_index()}] " if not hosts.is_primary() else ""
    _drop_native_chatter(prefix)
    if not hosts.is_primary():
        sys.stdout = _ProblemsOnly(sys.__stderr__, prefix)
        sys.stderr = _ProblemsOnly(sys.__stderr__, prefix)


# what JAX's CPU collectives (Gloo) print on the C++ side, on stdout, once per process
_NATIVE_CHATTER = ("[Gloo] ",)


def _drop_native_chatter(prefix: str) -> None:
    """Route what native code writes to file descriptor 1 (Gloo's `[Gloo] Rank 1 is connected to
    1 peer ranks...`, at a command's first collective) through a filter that drops that chatter
    and passes anything else on, prefixed like this process's lines. Python's own stdout keeps
    writing to the terminal directly, so no table or line of laggrow's waits on the filter."""
    import os
    import threading

    sys.stdout.flush()
    terminal = os.dup(1)
    sys.stdout = io.TextIOWrapper(os.fdopen(terminal, "wb", buffering=0), encoding=sys.stdout.encoding,
                                  errors=sys.stdout.errors, line_buffering=True, write_through=True)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb") as native:
            for line in native:
                if not line.decode(errors="replace").startswith(_NATIVE_CHATTER):
                    os.write(terminal, prefix.encode() + line)

    threading.Thread(target=forward, name="laggrow-native-stdout", daemon=True).start()


class _ProblemsOnly(io.TextIOBase):
    """A text stream passing on only the lines that report a problem (`error:`, `warning:`,
    `interrupted:`), prefixed with the process: a process other than 0 repeats no tables."""

    def __init__(self, target, prefix: str):
        self.target, self.prefix, self.pending = target, prefix, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.lstrip().startswith(("error:", "warning:", "interrupted:")):
                self.target.write(self.prefix + line + "\n")
                self.target.flush()
        return len(text)


# Order is the order of `laggrow --help`.
COMMAND_MODULES = ["tokenize", "train", "grow", "strategies", "pool", "correlate", "experiment", "stack", "hf",
                   "sample", "evaluate"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"laggrow.cli.{_name}").register(app)


def _quiet_orbax_leftovers(hook):
    """sys.unraisablehook, except for what Orbax's background work leaves after a failed save or
    restore has already been said in one line: the "Event loop is closed" its write callbacks raise
    from tensorstore's threads after a failed save, and the exception each of its read coroutines
    still holds when it is collected after a failed restore (a traceback of a hundred lines each)."""
    def quiet(unraisable):
        err, obj = unraisable.exc_value, unraisable.object
        closed_loop = isinstance(err, RuntimeError) and str(err) == "Event loop is closed"
        orbax_read = inspect.iscoroutine(obj) and f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename
        if not (closed_loop or orbax_read):
            hook(unraisable)
    return quiet


def main() -> None:
    import logging
    import sys
    import warnings

    from laggrow import compile_cache

    # before any verb imports jax: JAX reads its persistent-cache settings from the environment then
    compile_cache.configure()

    # Orbax logs each failed background write with its traceback (hundreds of lines for one full
    # disk); the error boundary says it in one line.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sys.unraisablehook = _quiet_orbax_leftovers(sys.unraisablehook)
    # and a failed write leaves tensorstore coroutines that were never awaited, which Python
    # reports at exit: noise after the one line that already said what happened
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    try:
        app()
    except BaseException as err:
        from laggrow import hosts

        if hosts.process_count() > 1:  # one of several processes: it must not wait for the others at exit
            end_one_of_several(err, hosts.process_index())
        raise
