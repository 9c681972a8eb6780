"""Shared test set-up: strict numpy rank promotion, a persistent compilation cache, tiny configs.

Tests are tiny and on CPU (2 layers, d_model 32). Compiling a train step costs seconds, so the
jitted steps are cached per config inside laggrow (functools.lru_cache) and on disk here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Subprocesses that tests start (laggrow killed mid-run, a second writer) inherit these, so they
# share the persistent compilation cache with the test process instead of compiling afresh.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The suite's time is mostly XLA compiling tiny programs it then runs for a few steps. Two things
# make compiling slow and neither matters for programs that run a few steps: LLVM's optimisation of
# the CPU code (turned down) and the newer fusion emitters, which generate a kernel per fusion
# (turned off: XLA's older emitters). `benchmarks/bench_compile_flags.py` on configs/tiny.yaml's
# train step: 2.7 s to compile with XLA's defaults, 1.6 s with LLVM's optimisation off, 0.8 s with
# both; the step then runs in 2.7, 6.3 and 9.0 ms. Tests compare runs with each other, never with
# figures of an optimised build; benchmarks and laggrow itself keep XLA's default. The persistent
# cache is keyed on these flags, so the two kinds of program never mix. Appended, not set: a worker
# re-appending them changes nothing.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture
def tiny_model_cfg():
    from laggrow.config import ModelConfig

    return ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=256, max_seq_len=16)


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return CONFIGS / "tiny.yaml"


def invoke_ok(*args):
    """Run `laggrow ARGS` in-process and insist that it succeeds."""
    from typer.testing import CliRunner

    from laggrow.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def tiny_base_run(tmp_path_factory, tiny_config_path) -> Path:
    """A real 10-step run of configs/tiny.yaml, trained once and shared: the source that growth
    and probe tests grow from. Tests must not write into it."""
    out = tmp_path_factory.mktemp("base") / "run"
    invoke_ok("train", tiny_config_path, "--out", out, "--set", "train.steps=10", "--set", "train.eval_every=10")
    return out


# ---- real laggrow processes, for tests that kill or interrupt them ------------------------------


def start_laggrow(*args, cwd: Path = REPO, stdout=None, fault: str | None = None) -> subprocess.Popen:
    """`python -m laggrow ARGS` as a real process (sharing the compilation cache, see above).
    `fault` (`POINT[:WHERE]=ACTION`, laggrow.faults) makes the process kill, interrupt or stop
    itself at that exact point of its work, so a test needs no timing to hit it."""
    from laggrow import faults

    env = dict(os.environ)
    env.pop(faults.ENV, None)
    if fault is not None:
        env[faults.ENV] = fault
    return subprocess.Popen([sys.executable, "-m", "laggrow", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    """Wait for a laggrow process to end (killing it after `timeout` seconds); its stderr."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return pytest.fail(f"laggrow did not end in {timeout} s: {proc.communicate()[1]}")


def wait_stopped(proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until a process started with a `...=SIGSTOP` fault has stopped itself there. The
    stop is awaited with waitpid(WUNTRACED) on a thread, so a process that ends instead (or
    hangs) fails the test with its stderr rather than blocking it."""
    import threading

    seen: list[int] = []
    waiter = threading.Thread(target=lambda: seen.append(os.waitpid(proc.pid, os.WUNTRACED)[1]), daemon=True)
    waiter.start()
    waiter.join(timeout)
    if not seen:
        proc.kill()
        pytest.fail(f"laggrow did not reach its fault point in {timeout} s")
    if not os.WIFSTOPPED(seen[0]):
        proc.returncode = os.waitstatus_to_exitcode(seen[0])  # reaped above: tell Popen
        pytest.fail(f"laggrow ended (rc {proc.returncode}) before its fault point: {proc.stderr.read()}")


def train_records(run: Path) -> list[tuple]:
    """(step, train_loss, eval_loss) of every record of a training run."""
    from laggrow import store

    return [(r["step"], r["train_loss"], r.get("eval_loss"))
            for r in store.read_jsonl(run / store.METRICS_FILE, "records")]


def invoke_in_repo(*args):
    """Run `laggrow ARGS` in-process from the repository root, where the experiments' default
    `out` (runs/...) and relative paths given on the command line are resolved."""
    from typer.testing import CliRunner

    from laggrow.cli import app

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(cwd)


def invoke_in_repo_ok(*args):
    result = invoke_in_repo(*args)
    assert result.exit_code == 0, result.output
    return result


def one_line_failure(result, expected: str) -> str:
    """A CliRunner result that failed the way users are promised: exit code 2, one line, naming
    `expected`. Returns the line."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and expected in lines[0], result.output
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file and directory under `directory` (the lock file aside: taking a lock is not
    writing), with the bytes of each file: compare two to prove nothing was written."""
    from laggrow import store

    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(directory.rglob("*")) if p.name != store.LOCK_FILE}


# ---- scheduling: the longest files first ---------------------------------------------------------

# `make test` runs two workers that take files in collection order (`--dist loadfile`). A long file
# taken last leaves one worker busy while the other idles, so the files that take 15 s or more
# (measured with --durations=0 from an empty compilation cache), longest first, are collected first.
# Order within a file is kept.
LONGEST_FIRST = ("test_mesh_layouts.py", "test_multihost.py", "test_stack_run.py", "test_pool_resilience.py",
                 "test_upscale.py", "test_train_resilience.py", "test_experiment_pools.py",
                 "test_experiment_resilience.py", "test_probe.py", "test_growth.py", "test_model_compute.py",
                 "test_hf.py", "test_growth_opt_state.py", "test_stack_source.py", "test_llama.py",
                 "test_compile_cache.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
