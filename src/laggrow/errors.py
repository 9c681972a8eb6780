"""The one exception a user can act on.

Everything that is the user's fault (a bad config key, a missing corpus, an unknown strategy)
raises `LaggrowError` with a one-line message that names the thing and what was expected. The
CLI turns it into that line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class LaggrowError(Exception):
    """A user-facing error: one line, names the culprit and what was expected."""


class KeyValueError(LaggrowError):
    """A LaggrowError about the value of one key (`key: expected ..., got ...`, raised by
    `config.require`). A caller that knows where the key came from names it its own way (a file's
    section, a command-line option) with `renamed`, without parsing the message."""

    def __init__(self, key: str, detail: str):
        super().__init__(f"{key}: {detail}")
        self.key, self.detail = key, detail

    def renamed(self, key: str) -> KeyValueError:
        return KeyValueError(key, self.detail)
