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

import functools
import sys
from collections.abc import Callable
from typing import Any

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


def _line(text: str) -> None:
    # one line, whatever the message holds (an OS error may quote a path with a newline in it)
    print(" ".join(text.split("\n")), file=sys.stderr, flush=True)
