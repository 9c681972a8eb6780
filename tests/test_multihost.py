"""Two laggrow processes joined by jax.distributed on the loopback address (CPU collectives):
one consistent set of records, written by process 0 alone, and checkpoints that both processes
wrote and that a single process resumes from; the same curves as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CONFIGS, REPO, TEST_XLA_FLAGS, invoke_ok
from laggrow import faults, hosts
from laggrow.errors import LaggrowError

SETS = ["train.steps=12", "train.eval_every=6", "train.log_every=3", "train.warmup_steps=2"]
TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def sets(items):
    return [part for item in items for part in ("--set", item)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(port: int) -> dict[str, str]:
    """One CPU device a process, and the coordinator bound to the loopback address only (JAX's
    default, [::]:port, needs IPv6)."""
    env = dict(os.environ, XLA_FLAGS=TEST_XLA_FLAGS)  # no forced device count
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
    return env


def two_processes(*args, timeout: float = 300, check: bool = True,
                  env: dict[int, dict[str, str]] | None = None) -> list[subprocess.CompletedProcess]:
    """`laggrow ARGS` as processes 0 and 1 of one cluster (`env`: extra variables per process);
    with `check`, both must succeed. Fails if either is still running after `timeout` seconds."""
    port = free_port()
    base = loopback_env(port)
    base.pop(faults.ENV, None)
    procs = [subprocess.Popen([sys.executable, "-m", "laggrow", "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i), *map(str, args)],
                              cwd=REPO, env={**base, **(env or {}).get(i, {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    for i, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"process {i} of laggrow {' '.join(map(str, args))} did not finish in {timeout} s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for i, r in enumerate(results):
        assert not check or r.returncode == 0, f"process {i}: {r.stderr[-3000:]}"
    return results


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def close(got: list[dict], want: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        for key in keys:
            if w.get(key) is not None:
                np.testing.assert_allclose(g[key], w[key], **TOLERANCE, err_msg=f"step {w['step']} {key}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run in one process: what the two must agree with."""
    out = tmp_path_factory.mktemp("single") / "run"
    invoke_ok("train", CONFIGS / "tiny.yaml", "--out", out, *sets(SETS))
    return out


def test_two_processes_and_one_take_turns_training_one_run(tmp_path, reference):
    out = tmp_path / "run"
    results = two_processes("train", CONFIGS / "tiny.yaml", "--out", out, *sets(SETS), "--until", "6")
    # process 0 alone wrote the records: each step once
    assert [r["step"] for r in jsonl(out / "metrics.jsonl")] == [3, 6]
    assert (out / "checkpoints" / "6" / "laggrow-manifest.json").is_file()
    assert not (out / "summary.json").exists()  # paused, not finished
    # process 1 prints nothing but problems, and no process Gloo's connection lines; process 0 says it paused
    assert results[1].stdout + results[1].stderr == "" and "paused at step 6" in results[0].stderr
    assert "Gloo" not in results[0].stdout + results[0].stderr
    # a checkpoint written by two processes, resumed by one, whose checkpoint two processes resume
    invoke_ok("train", CONFIGS / "tiny.yaml", "--out", out, *sets(SETS), "--resume", "--until", "9")
    assert [r["step"] for r in jsonl(out / "metrics.jsonl")] == [3, 6, 9]
    two_processes("train", CONFIGS / "tiny.yaml", "--out", out, *sets(SETS), "--resume")
    close(jsonl(out / "metrics.jsonl"), jsonl(reference / "metrics.jsonl"),
          ("train_loss", "grad_norm", "lr", "eval_loss"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["layout"]["processes"] == 2


def test_two_processes_probe_one_pool_with_the_curves_of_one_process(tmp_path, reference):
    pool = tmp_path / "pool.yaml"
    pool.write_text(json.dumps({"source": str(reference), "target": {"n_layers": 3},
                                "strategies": ["stack", "zero_top", "copy_zero"], "lag_steps": 4, "final_steps": 8,
                                "eval_points": 4, "eval_every": 2, "train": {"lr": 0.003}, "chunk_size": 0}))
    two_processes("probe", pool, "--out", tmp_path / "two")
    invoke_ok("probe", pool, "--out", tmp_path / "one")
    record = json.loads((tmp_path / "two" / "pool.json").read_text())
    # 2 devices, one a process: a candidate axis of 2, the 3 candidates padded to 4
    assert (record["layout"]["processes"], record["layout"]["candidates"]) == (2, 2)
    key = lambda r: (r["step"], r["candidate"])  # noqa: E731
    two = sorted(jsonl(tmp_path / "two" / "curves.jsonl"), key=key)
    close(two, sorted(jsonl(tmp_path / "one" / "curves.jsonl"), key=key), ("eval_loss", "train_loss"))
    assert not list(tmp_path.glob(".two.*"))  # the staging directory was renamed, once
    # the probe's states, saved by both processes: finalised and vouched for once
    assert (tmp_path / "two" / "probe_state" / "checkpoints" / "4" / "laggrow-manifest.json").is_file()
    ranked = lambda d: [r["strategy"] for r in json.loads((tmp_path / d / "probe.json").read_text())["candidates"]]  # noqa: E731
    assert ranked("two") == ranked("one")
    # (two processes restoring a checkpoint: the run taking turns above; train-final of a probe
    # on another layout: test_mesh_layouts.py)


@pytest.mark.parametrize(("args", "env", "message"), [
    (("127.0.0.1", 2, 0), {}, "--coordinator: expected HOST:PORT (process 0's address), got '127.0.0.1'"),
    (("127.0.0.1:1234", None, None), {}, "--coordinator 127.0.0.1:1234: expected --num-processes and --process-id"),
    (("127.0.0.1:99999", 2, 0), {}, "--coordinator 127.0.0.1:99999: expected a port in 1..65535 that every "
                                    "process can join, got 99999"),
    (("127.0.0.1:0", 2, 1), {}, "--coordinator 127.0.0.1:0: expected a port in 1..65535"),
    ((":1234", 2, 1), {}, "--coordinator: expected HOST:PORT (process 0's address), got ':1234'"),
    (("127.0.0.1:1234", 2, 1), {"LAGGROW_JOIN_TIMEOUT": "0"}, "--join-timeout: expected a number of seconds >= 1"),
    (("127.0.0.1:1234", 2, 2), {}, "--process-id: expected an integer in [0, 1], got 2"),
    ((None, 2, 0), {}, "--num-processes/--process-id: given without --coordinator"),
    ((None, None, None), {"LAGGROW_PROCESS_ID": "1"}, "LAGGROW_PROCESS_ID: given without --coordinator"),
    ((None, 2, None), {"LAGGROW_PROCESS_ID": "1"}, "--num-processes/LAGGROW_PROCESS_ID: given without"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "LAGGROW_NUM_PROCESSES": "two",
                          "LAGGROW_PROCESS_ID": "0"}, "LAGGROW_NUM_PROCESSES: expected an integer, got 'two'"),
])
def test_a_bad_cluster_is_one_line(args, env, message):
    with pytest.raises(LaggrowError) as err:
        hosts.cluster_from(*args, auto=False, environ=env)
    assert str(err.value).startswith(message)


def test_the_cluster_comes_from_the_environment_when_flags_are_absent():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "LAGGROW_NUM_PROCESSES": "4", "LAGGROW_PROCESS_ID": "3"}
    assert hosts.cluster_from(None, None, None, False, env) == hosts.Cluster("10.0.0.1:1234", 4, 3, False)
    assert not hosts.cluster_from(None, None, None, False, {}).wanted
    assert hosts.cluster_from(None, None, None, True, {}).wanted  # --distributed: JAX detects the rest


def test_laggrow_refuses_a_bad_coordinator_in_one_line(tmp_path):
    from laggrow.cli import app

    result = CliRunner().invoke(app, ["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0",
                                      "train", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --coordinator: expected HOST:PORT (process 0's address), got 'nohost'"]
    assert not (tmp_path / "run").exists()


def test_a_process_whose_cluster_never_forms_gives_up_in_one_line(tmp_path):
    """Process 1 of 2 with nobody at the coordinator's port, and process 0 of 2 that nobody
    joins: each ends after --join-timeout seconds with one line, having written nothing."""
    ports = [free_port(), free_port()]  # two clusters of one process each
    procs = [subprocess.Popen([sys.executable, "-m", "laggrow", "--coordinator", f"127.0.0.1:{ports[i]}",
                               "--num-processes", "2", "--process-id", str(i), "--join-timeout", "2",
                               "train", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / f"run{i}")],
                              cwd=REPO, env=loopback_env(ports[i]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for i, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=90)  # JAX alone waits 300 s
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"process {i} still waiting to join after 90 s")
        lines = [line for line in (out + err).splitlines() if "error:" in line]
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert lines == [f"{'[process 1] ' if i else ''}error: --coordinator 127.0.0.1:{ports[i]}: all 2 processes "
                         "had not joined after 2 s (expected every process started with the same coordinator "
                         "and number of processes, each with its own process id, and process 0 reachable there; "
                         "a longer wait: --join-timeout SECONDS)"], err
    assert list(tmp_path.iterdir()) == []


def test_a_crash_on_process_1_is_shown_and_ends_both_processes(tmp_path):
    """A bug on process 1 (a RuntimeError raised at its first record): its traceback, prefixed
    with the process, rather than nothing; and it does not wait for process 0 at exit, whose next
    collective fails and which says so in one line."""
    results = two_processes("train", CONFIGS / "tiny.yaml", "--out", tmp_path / "run", *sets(SETS), timeout=120,
                            check=False, env={1: {faults.ENV: "record:3=raise"}})
    crashed = results[1].stderr.splitlines()
    assert results[1].returncode == 1, results[1].stderr
    assert "[process 1] Traceback (most recent call last):" in crashed, results[1].stderr
    assert crashed[-1] == "[process 1] RuntimeError: LAGGROW_TEST_ONLY_FAULT: a fault raised at record:3"
    assert results[1].stdout == ""
    errors = [line for line in results[0].stderr.splitlines() if line.startswith("error:")]
    assert results[0].returncode == 2 and "Traceback" not in results[0].stderr, results[0].stderr
    assert len(errors) == 1 and errors[0].startswith("error: another process of this command stopped"), errors
    assert "Gloo] Rank" not in results[0].stdout + results[1].stderr


@pytest.mark.parametrize("command", [
    ("run", CONFIGS / "tiny_experiment.yaml"),
    ("stack", CONFIGS / "stack-tiny.yaml"),
])
def test_run_and_stack_on_several_processes_are_refused_at_start_on_every_process(command, tmp_path):
    results = two_processes(*command, "--out", tmp_path / "out", timeout=90, check=False)
    for i, r in enumerate(results):
        assert r.returncode == 2, r.stderr
        line = (f"{'[process 1] ' if i else ''}error: laggrow {command[0]}: runs in one process only (expected no "
                f"--coordinator, --distributed or JAX_COORDINATOR_ADDRESS{INSTEAD[command[0]]}")
        assert r.stderr.splitlines() == [line], r.stderr
    assert list(tmp_path.iterdir()) == []


INSTEAD = {"run": "; on several processes, run its stages with laggrow train, probe and train-final)", "stack": ")"}


LIBRARY_USE = """
import sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from laggrow import faults, hosts
print(hosts.process_index(), hosts.process_count(), hosts.is_primary())
"""


def test_a_program_that_joins_the_cluster_itself_has_process_0_write():
    port = free_port()
    env = loopback_env(port)
    procs = [subprocess.Popen([sys.executable, "-c", LIBRARY_USE, f"127.0.0.1:{port}", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    said = [p.communicate(timeout=120)[0].split()[-3:] for p in procs]
    assert said == [["0", "2", "True"], ["1", "2", "False"]]
