"""One module per CLI verb. Each defines `register(app)`; `laggrow.cli` lists the modules.

Command modules import jax, flax and friends inside the command body, never at module level,
so that `laggrow --help` answers instantly.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from laggrow.errors import LaggrowError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `LaggrowError` into one line on stderr and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LaggrowError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper
