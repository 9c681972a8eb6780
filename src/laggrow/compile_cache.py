"""Where the command line keeps JAX's persistent compilation cache (on by default).

Compiling a train step costs seconds (a stacking run compiles one per depth, a pool one per size),
and a second `laggrow run`, `probe` or `stack` of the same shapes compiles them again unless XLA's
executables are kept on disk. JAX reads its cache settings from the environment when it is
imported, so `laggrow.cli.main` calls `configure` before any verb imports jax.

- `JAX_COMPILATION_CACHE_DIR` set: JAX's own variable wins, laggrow changes nothing.
- `LAGGROW_COMPILATION_CACHE=off` (or `0`, `false`, `no`): no persistent cache.
- `LAGGROW_COMPILATION_CACHE=DIR`: the cache in DIR.
- otherwise: `$XDG_CACHE_HOME/laggrow/jax`, by default `~/.cache/laggrow/jax`.
- a directory laggrow cannot create or write: one warning line, and no cache.

Programs that compile in under `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` (laggrow's default 0.5 s,
JAX's 1 s) are not written: reading them back would cost about what compiling does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

ENV = "LAGGROW_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no")
MIN_COMPILE_SECONDS = "0.5"


def cache_dir(environ: MutableMapping[str, str]) -> Path | None:
    """The directory the cache goes to under `environ`, or None when it is off."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(environ["JAX_COMPILATION_CACHE_DIR"])
    chosen = environ.get(ENV, "").strip()
    if chosen.lower() in OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "laggrow" / "jax"


def configure(environ: MutableMapping[str, str] | None = None, create: bool = True) -> Path | None:
    """Set JAX's cache variables in `environ` (default `os.environ`) as the module docstring says;
    returns the directory, or None when off. laggrow's own choice of directory is created and
    checked first (`create`): one that cannot be written is one warning line and no cache, instead
    of a multi-line JAX warning at every compilation."""
    environ = os.environ if environ is None else environ
    directory = cache_dir(environ)
    if directory is None:
        return None
    if create and not environ.get("JAX_COMPILATION_CACHE_DIR"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            usable = os.access(directory, os.W_OK)
            reason = "not writable"
        except OSError as err:
            usable, reason = False, (err.strerror or type(err).__name__).lower()
        if not usable:
            print(f"warning: compilation cache {directory}: {reason}; compiling without it "
                  f"(set {ENV} to a writable directory, or to off)", file=sys.stderr, flush=True)
            return None
    environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_COMPILE_SECONDS)
    return directory
