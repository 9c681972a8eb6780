"""The one exception a user can act on.

Everything that is the user's fault (a bad config key, a missing corpus, an unknown strategy)
raises `LaggrowError` with a one-line message that names the thing and what was expected. The
CLI turns it into that line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class LaggrowError(Exception):
    """A user-facing error: one line, names the culprit and what was expected."""
