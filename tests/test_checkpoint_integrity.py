"""Damaged checkpoints and record files: detected, fallen back from, or refused in one line.

One uninterrupted run of a small config is the reference; one run of the same config paused at
step 10 (checkpoints 5 and 10) is copied for each test, damaged, and resumed in-process with
the real CLI. A resume that falls back to checkpoint 5 must end with exactly the reference's
records, as if nothing had happened.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import invoke_ok, train_records
from laggrow import checkpoint, store
from laggrow.cli import app
from laggrow.errors import LaggrowError

SETS = ["--set", "train.steps=15", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=5"]
runner = CliRunner()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_config_path) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "reference"
    invoke_ok("train", tiny_config_path, "--out", out, *SETS)
    return out


@pytest.fixture(scope="module")
def paused(tmp_path_factory, tiny_config_path) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "paused"
    invoke_ok("train", tiny_config_path, "--out", out, *SETS, "--until", 10)
    assert sorted(p.name for p in (out / store.CHECKPOINT_DIR).iterdir()) == ["10", "5"]
    return out


@pytest.fixture
def run(paused, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(paused, copy)
    return copy


def _resume(tiny_config_path, run: Path, *extra):
    return runner.invoke(app, ["train", str(tiny_config_path), "--out", str(run), *SETS, "--resume", *map(str, extra)])


def _data_files(step_dir: Path) -> list[Path]:
    return sorted((step_dir / "default").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)


def _flip_bytes(step_dir: Path) -> None:
    target = _data_files(step_dir)[-1]
    raw = bytearray(target.read_bytes())
    for i in range(100, 116):
        raw[len(raw) // 2 + i] ^= 0xFF
    target.write_bytes(bytes(raw))


def _truncate(step_dir: Path) -> None:
    target = _data_files(step_dir)[-1]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])


def _delete_data(step_dir: Path) -> None:
    for path in _data_files(step_dir):
        path.unlink()


def _garble_metadata(step_dir: Path) -> None:
    (step_dir / "default" / "_METADATA").write_bytes(b"\x00garbage{not json")


def _drop_manifest(step_dir: Path) -> None:  # killed between Orbax's finalise and the manifest
    (step_dir / store.CHECKPOINT_MANIFEST).unlink()


DAMAGE = {"flipped bytes": (_flip_bytes, "changed"), "truncated": (_truncate, "bytes, expected"),
          "data deleted": (_delete_data, "missing"), "garbled _METADATA": (_garble_metadata, "_METADATA"),
          "no manifest": (_drop_manifest, "no manifest")}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_ends_as_uninterrupted(name, run, reference, tiny_config_path):
    damage, reason = DAMAGE[name]
    damage(run / store.CHECKPOINT_DIR / "10")
    result = _resume(tiny_config_path, run)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "checkpoint 10" in warnings[0] and "is damaged" in warnings[0] and reason in warnings[0]
    assert warnings[0].endswith("falling back to checkpoint 5")
    assert train_records(run) == train_records(reference)
    assert json.loads((run / store.SUMMARY_FILE).read_text())["final_eval_loss"] == \
        json.loads((reference / store.SUMMARY_FILE).read_text())["final_eval_loss"]
    # the damaged step was removed and saved again; the kept checkpoints are intact
    with checkpoint.Checkpointer(run, read_only=True) as ckpt:
        assert ckpt.steps() == [10, 15]
        assert [ckpt.verify(s) for s in ckpt.steps()] == [None, None]


def _fails_one_line(result, *expected: str) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run but the lock (which holds the pid of its last holder)."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != store.LOCK_FILE}


def test_no_intact_checkpoint_is_one_line_and_changes_nothing(run, tiny_config_path):
    _flip_bytes(run / store.CHECKPOINT_DIR / "10")
    _delete_data(run / store.CHECKPOINT_DIR / "5")
    before = _snapshot(run)
    result = _resume(tiny_config_path, run)
    _fails_one_line(result, "no intact checkpoint", "checkpoint 10:", "checkpoint 5:")
    assert _snapshot(run) == before, "a refused resume writes nothing"


def test_config_json_replaced_by_another_valid_config_is_refused(run, tmp_path):
    # Another valid config (a wider model) in the run's place: the checkpoints were not saved
    # for it, so restoring them (an Orbax shape traceback before) is refused in one line.
    other = json.loads((run / store.CONFIG_FILE).read_text())
    other["model"].update(d_model=64, d_ff=256)
    (run / store.CONFIG_FILE).write_text(json.dumps(other))
    before = _snapshot(run)
    result = runner.invoke(app, ["train", str(run / store.CONFIG_FILE), "--out", str(run), "--resume"])
    _fails_one_line(result, "no intact checkpoint", "another config than config.json")
    assert _snapshot(run) == before


def test_torn_last_record_is_cut_and_the_resume_is_exact(run, reference, tiny_config_path):
    metrics = run / store.METRICS_FILE
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 15, "train_lo')  # killed mid-append
    result = _resume(tiny_config_path, run)
    assert result.exit_code == 0, result.output
    assert train_records(run) == train_records(reference)


def test_garbage_in_the_middle_of_the_records_names_file_and_line(run, tiny_config_path):
    metrics = run / store.METRICS_FILE
    lines = metrics.read_bytes().split(b"\n")
    lines[1] = b"\x00\x01 not a record"
    metrics.write_bytes(b"\n".join(lines))
    before = _snapshot(run)
    result = _resume(tiny_config_path, run)
    _fails_one_line(result, f"{metrics} line 2: malformed")
    assert _snapshot(run) == before


def test_damaged_cached_tokenizer_is_one_line(tmp_path):
    from laggrow.config import DataConfig
    from laggrow.data import load_dataset

    (tmp_path / store.TOKENIZER_FILE).write_text('{"model": {"type": "BPE", "vocab": 5')
    with pytest.raises(LaggrowError, match="not a readable tokenizer") as err:
        load_dataset(DataConfig(corpus="kjv", tokenizer="bpe", seq_len=16), tmp_path)
    assert "\n" not in str(err.value)


def _state(value: float, step: int) -> dict:
    return {"params": {"w": jnp.full((64,), value)}, "step": jnp.asarray(step, jnp.int32)}


def test_checkpointer_api_verifies_refuses_and_keeps_meta(tmp_path):
    target = _state(0.0, 0)
    with checkpoint.Checkpointer(tmp_path, fingerprint={"run": "a"}) as ckpt:
        ckpt.save(_state(1.0, 1), data_position=11, meta={"seconds": 2.5})
        ckpt.save(_state(2.0, 2), data_position=22)
        ckpt.save(_state(3.0, 3), data_position=33, meta={"seconds": 7.0})
        assert ckpt.steps() == [2, 3], "max_to_keep=2"
    _garble_metadata(tmp_path / store.CHECKPOINT_DIR / "3")
    with checkpoint.Checkpointer(tmp_path, fingerprint={"run": "a"}, read_only=True) as ckpt:
        assert ckpt.verify(2) is None and re.fullmatch(r"default/_METADATA is 17 bytes, expected \d+", ckpt.verify(3))
        with pytest.raises(LaggrowError, match=r"checkpoint 3 in .* is damaged \(default/_METADATA is 17 bytes"):
            ckpt.restore(target, step=3)
        state, position = ckpt.restore(target)  # falls back, removes nothing (read-only)
        assert (ckpt.restored_step, position, ckpt.restored_meta) == (2, 22, {})
        np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((64,), 2.0))
        assert list(ckpt.damaged) == [3]
    assert (tmp_path / store.CHECKPOINT_DIR / "3").is_dir()
    with checkpoint.Checkpointer(tmp_path, fingerprint={"run": "b"}, read_only=True) as ckpt:
        assert "another config" in ckpt.verify(2)
    with checkpoint.Checkpointer(tmp_path) as ckpt:  # no fingerprint given: not compared
        ckpt.restore(target, remove_damaged=True)
        assert ckpt.steps() == [2] and not (tmp_path / store.CHECKPOINT_DIR / "3").exists()
        ckpt.save(jax.tree.map(jnp.asarray, _state(4.0, 3)), data_position=44)  # step 3 saved again
        assert ckpt.verify(3) is None


# Orbax's read coroutines, collected after the failed restore, hold its error ("Exception ignored"; at
# times "Event loop is closed"); the command line's hook drops them (test_the_command_line_hides_...)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_verified_checkpoint_that_cannot_be_restored_is_neither_marked_damaged_nor_removed(tmp_path, capsys):
    # Step 2 verifies (its bytes are what was saved) but cannot be restored into the target at hand,
    # as one cannot be without the memory or the devices it needs: it was once marked damaged, and
    # deleted as soon as step 1 restored, on a guess.
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save({"params": {"w": jnp.full((32,), 1.0)}, "step": jnp.asarray(1, jnp.int32)}, data_position=11)
        ckpt.save(_state(2.0, 2), data_position=22)  # 64 values
    target = {"params": {"w": jnp.zeros((32,))}, "step": jnp.asarray(0, jnp.int32)}
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.verify(2) is None
        with pytest.raises(checkpoint.CheckpointUnreadable,
                           match=r"checkpoint 2 in .*: verified intact, but cannot be restored on this machine"):
            ckpt.restore(target, remove_damaged=True)
        assert ckpt.damaged == {}
    assert sorted(p.name for p in (tmp_path / store.CHECKPOINT_DIR).iterdir()) == ["1", "2"]
    assert "damaged" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tensorstore's closed loop
def test_a_save_on_a_full_disk_is_one_line_and_closing_adds_no_second_error(tmp_path):
    # 0 bytes free: Orbax's own metadata write fails (an OSError) and the close that followed raised
    # the same failure again from Orbax's thread, a traceback of some 190 lines over the one line
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small filesystem needs root")
    try:
        ckpt = checkpoint.Checkpointer(disk)
        with (disk / "filler").open("wb", buffering=0) as filler:
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        with pytest.raises(LaggrowError, match=r"checkpoint 1 in .*: cannot be written \(no space left on device\)"):
            ckpt.save(_state(1.0, 1), data_position=1)
        ckpt.close()  # the failure is reported once: closing raises nothing
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _an_orbax_coroutine():
    """A coroutine object of one of Orbax's own coroutine functions (its arguments bound to None,
    never run): what the command line's unraisable hook meets when a failed restore's reads are
    collected."""
    import inspect
    import sys

    import orbax.checkpoint  # noqa: F401  (its modules, in sys.modules)

    for name, module in sorted(sys.modules.items()):
        if not name.startswith("orbax.checkpoint"):
            continue
        for fn in vars(module).values():
            if inspect.iscoroutinefunction(fn) and fn.__module__ == name:
                params = inspect.signature(fn).parameters.values()
                args = [None for p in params if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD]
                kwargs = {p.name: None for p in params if p.default is p.empty and p.kind == p.KEYWORD_ONLY}
                return fn(*args, **kwargs)
    raise AssertionError("no coroutine function in orbax.checkpoint")


def test_the_command_line_hides_only_orbaxs_leftovers_after_a_failure():
    """After a failed restore, Orbax's read coroutines are collected holding their exception and
    Python prints each as "Exception ignored in: <coroutine ...>" with a long traceback (seen from
    Checkpointer.restore in a plain process); the command line's unraisable hook drops those and the
    closed-loop errors of a failed save, and passes everything else on."""
    import types

    from laggrow.cli import _quiet_orbax_leftovers

    passed = []
    hook = _quiet_orbax_leftovers(passed.append)

    async def ours():
        pass

    orbax_read, our_coroutine = _an_orbax_coroutine(), ours()
    try:
        def unraisable(err, obj):
            return types.SimpleNamespace(exc_type=type(err), exc_value=err, exc_traceback=None, err_msg=None,
                                         object=obj)

        hook(unraisable(Exception("Encountered error while reading array index"), orbax_read))
        hook(unraisable(RuntimeError("Event loop is closed"), None))
        assert passed == []
        others = [unraisable(Exception("a bug of ours"), our_coroutine), unraisable(RuntimeError("other"), None)]
        for other in others:
            hook(other)
        assert passed == others
    finally:
        orbax_read.close()
        our_coroutine.close()
