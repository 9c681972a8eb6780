"""Ctrl-C (SIGINT) and SIGTERM as a request to stop, not an exception thrown into the middle of
a step or of an Orbax save.

Inside `deferred()`, the first signal only sets a flag. The training loops look at it between
steps (`requested()`), save where that is cheap and raise `Interrupted` with a message saying
how to continue; the CLI prints that one line and exits 130. A second signal means "now": it
raises KeyboardInterrupt at once, and the work in progress is lost to the last checkpoint, as
after a SIGKILL (which every writer here survives anyway).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = threading.Event()


class Interrupted(Exception):
    """Raised by a loop that stopped on request; the message says what was saved and how to go on."""


def requested() -> bool:
    return _requested.is_set()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Defer SIGINT and SIGTERM to the next `requested()` check. Outside the main thread (where
    Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    _requested.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested.clear()
