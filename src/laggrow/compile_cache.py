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
- an entry JAX cannot read back (truncated by a process killed while writing it, damaged on disk):
  one warning line naming the cache and the entry, which is removed, so the program is compiled and
  written again (JAX itself warns in two raw lines on every run and never replaces it).

Programs that compile in under `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` (laggrow's default 0.5 s,
JAX's 1 s) are not written: reading them back would cost about what compiling does.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

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
    of a multi-line JAX warning at every compilation. For this process's environment, entries JAX
    cannot read are guarded too (`guard_entries`)."""
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
    if environ is os.environ:  # this process's cache (another mapping only asks where it would go)
        guard_entries(directory)
    return directory


# ---- damaged entries --------------------------------------------------------------------------------

# JAX reads an entry in `jax._src.compilation_cache.get_executable_and_time(cache_key, ...)`; the
# entry's files in the cache directory are named after the key.
_JAX_MODULE = "jax._src.compilation_cache"
_READER = "get_executable_and_time"
_ENTRY_SUFFIXES = ("-cache", "-atime")


def guarded_reader(read: Callable[..., Any], directory: Path) -> Callable[..., Any]:
    """JAX's cache reader, made to treat an entry it cannot read as a miss: one warning line naming
    the cache and the entry, and the entry removed so that the compiled program is written again."""

    def get_executable_and_time(cache_key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return read(cache_key, *args, **kwargs)
        except Exception as err:
            for suffix in _ENTRY_SUFFIXES:
                with contextlib.suppress(OSError):
                    (Path(directory) / f"{cache_key}{suffix}").unlink()
            why = " ".join((str(err).splitlines() or [""])[0].split())[:100] or type(err).__name__
            print(f"warning: compilation cache {directory}: entry {cache_key} cannot be read ({why}); removed, "
                  "its program is compiled again", file=sys.stderr, flush=True)
            return None, None

    get_executable_and_time.laggrow_guarded = True  # type: ignore[attr-defined]
    return get_executable_and_time


class _GuardOnImport(importlib.abc.MetaPathFinder):
    """Wraps JAX's cache reader (`guarded_reader`) as soon as JAX imports its cache module: the
    command line decides the cache before jax is imported, and must not import it itself
    (`laggrow --help` stays instant)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _JAX_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, directory = spec.loader, self.directory

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                _wrap(module, directory)

        spec.loader = Loader()
        return spec


def _wrap(module: Any, directory: Path) -> None:
    read = getattr(module, _READER, None)
    if callable(read) and not getattr(read, "laggrow_guarded", False):
        setattr(module, _READER, guarded_reader(read, directory))


def guard_entries(directory: Path) -> None:
    """Guard JAX's reading of the cache in `directory` (see `guarded_reader`): now if JAX's cache
    module is imported already, else when it is."""
    module = sys.modules.get(_JAX_MODULE)
    if module is not None:
        _wrap(module, directory)
    elif not any(isinstance(finder, _GuardOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _GuardOnImport(directory))
