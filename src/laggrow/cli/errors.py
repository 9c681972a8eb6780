"""The one error boundary of the command line.

Every verb is wrapped in `user_errors`. What is the user's to fix ends in one line on stderr and
exit code 2, never a traceback: a `LaggrowError` (bad config, damaged record, refused --out), and
an `OSError` (a full disk, a path that cannot be written), which on a user's paths is the
environment's fault, not laggrow's, and a real out-of-memory error of XLA (what ran out and what
to lower: the memory estimates are lower bounds). A stop on request (Ctrl-C, SIGTERM) ends in one line saying
what was saved and how to continue, with exit code 130 as shells expect. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from laggrow.errors import LaggrowError
from laggrow.interrupt import Interrupted
from laggrow.resources import out_of_memory_message

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def describe_os_error(err: OSError) -> str:
    """`path: reason` for an OSError, as one line."""
    reason = err.strerror or str(err) or type(err).__name__
    where = err.filename if err.filename is not None else None
    if err.filename2 is not None:
        where = f"{err.filename} -> {err.filename2}"
    return f"{where}: {reason.lower()}" if where is not None else reason.lower()


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors and interruptions into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LaggrowError as err:
            _line(f"error: {err}")
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except OSError as err:
            _line(f"error: {describe_os_error(err)}")
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except Interrupted as err:
            _line(f"interrupted: {err}")
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        except Exception as err:
            message = out_of_memory_message(err)  # XLA's own report: a stack of frames and a status
            if message is None:
                raise
            _line(f"error: {message}")
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            _line("interrupted: stopped at once; what was checkpointed is kept (run the same command "
                  "again, with --resume for laggrow train)")
            raise typer.Exit(code=EXIT_INTERRUPTED) from None

    return wrapper


def exit_now(line: str, code: int) -> NoReturn:
    """Print `line` and end the process at once, from any thread: for a process blocked inside
    native code (waiting to join a cluster) that no exception can reach."""
    _line(line)
    _flush()
    os._exit(code)


# how long a failing process waits for the others to fail too (they do at once on bad input)
FAILED_TOGETHER_WAIT = 5.0


def end_one_of_several(err: BaseException, process: int) -> NoReturn:
    """How one process of a multi-process command ends: `err` is what ended its command (the
    SystemExit that the error boundary and Typer end with, or a crash).

    A success exits as usual, through JAX's shutdown, where every process meets. A failure is
    printed first (its line, or for a crash its traceback, prefixed with the process on
    processes other than 0). Then, if every process failed (bad input that each one found), they
    leave together through that shutdown too. Otherwise the others are still working or waiting
    for this one: waiting for them at the shutdown would hang for minutes, so this process ends at
    once, and its leaving is what stops the others: their next collective fails, which they report
    in one line here in turn."""
    from laggrow import hosts

    if isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        if code == 0:
            raise err
    elif _peer_stopped(err):
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        _line(f"error: another process of this command stopped ({reason}); expected all of them to go on "
              "(the first error printed says why)")
        code = EXIT_USER_ERROR
    else:
        prefix = f"[process {process}] " if process else ""
        text = "".join(traceback.format_exception(err))
        sys.__stderr__.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))
        code = 1
    _flush()
    if hosts.meet("laggrow: every process failed", FAILED_TOGETHER_WAIT):
        raise SystemExit(code)
    os._exit(code)


def _peer_stopped(err: BaseException) -> bool:
    """A collective across processes that failed because another process is gone (JAX's CPU
    collectives report it as a Gloo error, e.g. `Connection closed by peer`)."""
    return isinstance(err, (RuntimeError, ValueError)) and "Gloo" in str(err)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()


def _line(text: str) -> None:
    # one line, whatever the message holds (an OS error may quote a path with a newline in it)
    print(" ".join(text.split("\n")), file=sys.stderr, flush=True)
