"""The command line's persistent compilation cache: where it goes, how it is turned off, and that a
real `laggrow` process writes it there (and nowhere when off)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO
from laggrow import compile_cache


@pytest.mark.parametrize(("environ", "expected"), [
    ({"HOME": "/h"}, "/h/.cache/laggrow/jax"),
    ({"HOME": "/h", "XDG_CACHE_HOME": "/x"}, "/x/laggrow/jax"),
    ({"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "/mine"}, "/mine"),
    ({"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "~/c"}, str(Path("~/c").expanduser())),
    ({"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "/mine", "JAX_COMPILATION_CACHE_DIR": "/jax"}, "/jax"),
    ({"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "off"}, None),
    ({"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "OFF"}, None),
    ({"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "0"}, None),
])
def test_the_cache_directory_follows_the_environment(environ, expected):
    got = compile_cache.cache_dir(dict(environ))
    assert (None if got is None else str(got)) == expected


def test_configure_sets_jax_variables_and_keeps_what_the_user_set():
    environ = {"HOME": "/h"}
    assert compile_cache.configure(environ, create=False) == Path("/h/.cache/laggrow/jax")
    assert environ["JAX_COMPILATION_CACHE_DIR"] == "/h/.cache/laggrow/jax"
    assert environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0.5"
    mine = {"HOME": "/h", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "3"}
    compile_cache.configure(mine, create=False)
    assert mine["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "3"
    off = {"HOME": "/h", "LAGGROW_COMPILATION_CACHE": "off"}
    assert compile_cache.configure(off) is None and "JAX_COMPILATION_CACHE_DIR" not in off


def test_a_cache_directory_that_cannot_be_made_is_one_warning_and_no_cache(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    environ = {"HOME": str(tmp_path), compile_cache.ENV: str(blocker / "cache")}
    assert compile_cache.configure(environ) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in environ
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: compilation cache {blocker / 'cache'}: ")
    made = {"HOME": str(tmp_path), compile_cache.ENV: str(tmp_path / "new" / "cache")}
    assert compile_cache.configure(made) == tmp_path / "new" / "cache" and (tmp_path / "new" / "cache").is_dir()


def _train(tmp_path: Path, name: str, expect_stderr: bool = False, **env: str) -> Path | str:
    """A real 2-step `laggrow train` with HOME in tmp_path and no JAX cache variable inherited;
    returns HOME (or, with `expect_stderr`, the process's stderr). A HOME trained in before is
    trained in again (its run directory made anew)."""
    import shutil

    home = tmp_path / f"home-{name}"
    shutil.rmtree(tmp_path / f"run-{name}", ignore_errors=True)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME", compile_cache.ENV)}
    environ.update(HOME=str(home), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    proc = subprocess.run([sys.executable, "-m", "laggrow", "train", str(CONFIGS / "tiny.yaml"), "--out",
                           str(tmp_path / f"run-{name}"), "--set", "train.steps=2", "--set", "train.eval_every=2",
                           "--set", "train.warmup_steps=0"],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr if expect_stderr else home


def test_a_laggrow_process_caches_its_compilations_by_default_and_not_when_off(tmp_path):
    home = _train(tmp_path, "default")
    cache = home / ".cache" / "laggrow" / "jax"
    cached = list(cache.iterdir())
    assert cached, "the default cache directory holds the run's compiled programs"
    # an entry cut short (a process killed while writing it): one warning naming the cache, and the
    # entry written again; JAX alone warned in two raw lines on every run and never replaced it
    entry = max(cache.glob("jit_step_fn-*-cache"), key=lambda p: p.stat().st_size)
    whole = entry.stat().st_size
    entry.write_bytes(entry.read_bytes()[:5000])
    stderr = _train(tmp_path, "default", expect_stderr=True)
    warnings = [line for line in stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith(f"warning: compilation cache {cache}: entry {entry.name.removesuffix('-cache')} "
                                  "cannot be read (")
    assert "UserWarning" not in stderr
    assert abs(entry.stat().st_size - whole) < whole / 10, "written again whole"
    home = _train(tmp_path, "off", LAGGROW_COMPILATION_CACHE="off")
    assert not (home / ".cache").exists()
