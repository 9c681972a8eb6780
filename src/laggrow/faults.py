"""Test-only fault points: a laggrow process stops itself at a named point of its work.

The kill and interrupt tests need a real process to die or be interrupted at an exact point (in
a checkpoint save, right after a record). Polling the disk for that point from the test races
the process on a loaded machine, so instead the test names the point and the process acts there
itself:

    LAGGROW_TEST_ONLY_FAULT=POINT[:WHERE]=ACTION

POINT is one of the calls to `point` in the library:

- `record:STEP`: records of step STEP were appended to a JSONL stream (metrics, curves);
- `save:STEP`: Orbax is writing checkpoint STEP in the background (not yet finalised);
- `finalised:STEP`: Orbax finalised checkpoint STEP on every process, its manifest not written;
- `saved:STEP`: checkpoint STEP and its manifest are written;
- `staged:NAME`: the staging directory of NAME (a probe's `--out` name) was made and locked;
- `chunk:N`: `laggrow tokenize` committed its chunk N (1, 2, ...: token files and progress written).

Without `:WHERE` the first such point matches, whatever its step or name. ACTION is `SIGKILL`,
`SIGINT` (what Ctrl-C sends: the loops stop after the current step), `SIGSTOP` (the process
stops until the test sends SIGCONT: it blocks exactly there) or `raise` (a RuntimeError, as a
bug would). A point acts once per process.

The variable is read once, at import; unset (every user's case) a `point` call is one
comparison. Its name says it is for tests; docs/design.md's testing section documents it.
"""

from __future__ import annotations

import os
import signal

from laggrow.errors import LaggrowError

ENV = "LAGGROW_TEST_ONLY_FAULT"
ACTIONS = ("SIGKILL", "SIGINT", "SIGSTOP", "raise")
POINTS = ("record", "save", "finalised", "saved", "staged", "chunk")


def _parse(spec: str | None) -> tuple[str, str | None, str] | None:
    if not spec:
        return None
    where, _, action = spec.partition("=")
    name, _, at = where.partition(":")
    if name not in POINTS or action not in ACTIONS:
        raise LaggrowError(f"{ENV}: expected POINT[:WHERE]=ACTION with POINT one of {', '.join(POINTS)} and "
                           f"ACTION one of {', '.join(ACTIONS)}, got {spec!r} (a variable for laggrow's tests)")
    return name, at or None, action


_armed = _parse(os.environ.get(ENV))


def point(name: str, where: object = None) -> None:
    """The process reached fault point `name` at `where` (a step, a name): act if a test asked."""
    global _armed
    if _armed is None:
        return
    want, at, action = _armed
    if name != want or (at is not None and at != str(where)):
        return
    _armed = None  # once
    if action == "raise":
        raise RuntimeError(f"{ENV}: a fault raised at {name}:{where}")
    os.kill(os.getpid(), getattr(signal, action))
