"""The store: atomic writes, valid JSON, torn JSONL tails, locks and staged directories."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from laggrow import store
from laggrow.errors import LaggrowError


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = tmp_path / "r.json"
    store.write_json(path, {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": {"d": 2.5}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None, None], "c": {"d": 2.5}}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_write_text_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    store.write_text(path, "old")
    store.write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_write_text_if_changed_keeps_an_identical_file_untouched(tmp_path):
    path = tmp_path / "f.txt"
    store.write_text(path, "same")
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert store.write_text(path, "same", if_changed=True) is False
    assert path.stat().st_mtime_ns == before
    assert store.write_text(path, "other", if_changed=True) is True


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    store.write_text(path, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.write_file(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_append_cuts_a_torn_last_line_first(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')  # a writer killed mid-line
    assert store.read_jsonl(path, "records") == [{"step": 1}, {"step": 2}]  # readers skip the torn tail
    store.append_jsonl(path, [{"step": 3}])
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'


def test_read_jsonl_repair_truncates_the_torn_tail(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "loss": 1.')
    assert store.read_jsonl(path, "records", repair=True) == [{"step": 1}]
    assert path.read_text() == '{"step": 1}\n'


def test_a_torn_only_line_leaves_an_empty_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step"')
    assert store.read_jsonl(path, "records", repair=True) == []
    assert path.read_text() == ""


@pytest.mark.parametrize("content, line", [('{"a": 1}\ngarbage\n{"a": 2}\n', 2), ('\xff\xfe\n', 1), ("[1, 2]\n", 1)])
def test_a_damaged_complete_line_is_one_error_naming_the_line(tmp_path, content, line):
    path = tmp_path / "m.jsonl"
    path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    with pytest.raises(LaggrowError) as err:
        store.read_jsonl(path, "training records")
    assert f"line {line}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content, expected", [
    (b"", "malformed JSON"), (b"\x89PNG\x00\xff", "not UTF-8"), (b"[1, 2]", "got list"), (b"{", "malformed JSON")])
def test_read_json_names_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "pool.json"
    path.write_bytes(content)
    with pytest.raises(LaggrowError) as err:
        store.read_json(path, "pool record")
    assert str(path) in str(err.value) and expected in str(err.value) and "pool record" in str(err.value)


def test_read_json_of_a_missing_file(tmp_path):
    with pytest.raises(LaggrowError, match="not found"):
        store.read_json(tmp_path / "nothing.json", "summary")


def test_require_keys(tmp_path):
    assert store.require_keys({"a": 1, "b": 2}, ("a",), tmp_path, "x") == {"a": 1, "b": 2}
    with pytest.raises(LaggrowError, match="missing b, c"):
        store.require_keys({"a": 1}, ("a", "b", "c"), tmp_path / "f.json", "record")


def test_write_outputs_is_all_or_nothing_and_takes_texts(tmp_path):
    (tmp_path / "a.txt").write_text("old")

    def fail(path):
        path.write_text("half")
        raise RuntimeError("figure failed")

    with pytest.raises(RuntimeError):
        store.write_outputs(tmp_path, {"a.txt": "new", "b.png": fail})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"
    store.write_outputs(tmp_path, {"a.txt": "new", "b.txt": "b"})
    assert (tmp_path / "a.txt").read_text() == "new" and (tmp_path / "b.txt").read_text() == "b"


HOLD_LOCK = """
import sys, time
from laggrow import store
store.DirLock(sys.argv[1], "run").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_dead_one_leaves_no_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LaggrowError) as err:
            store.DirLock(tmp_path, "run").acquire()
        assert f"pid {proc.pid}" in str(err.value) and "in use by another laggrow process" in str(err.value)
    finally:
        proc.kill()
        proc.wait()
    with store.DirLock(tmp_path, "run"):  # SIGKILLed holder: the kernel dropped its lock
        pass


def test_taking_the_lock_removes_a_dead_writers_temporaries(tmp_path):
    (tmp_path / ".correlation.json.tmp").write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    with store.DirLock(tmp_path, "pool"):
        assert sorted(p.name for p in tmp_path.iterdir()) == [store.LOCK_FILE, "keep.json"]


def test_staged_dir_appears_only_when_complete(tmp_path):
    out = tmp_path / "probe"
    with pytest.raises(RuntimeError), store.staged_dir(out) as tmp:
        (tmp / "half.json").write_text("{}")
        raise RuntimeError("killed by a bug")
    assert list(tmp_path.iterdir()) == []
    with store.staged_dir(out) as tmp:
        (tmp / "whole.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["whole.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]


def test_a_stale_staging_dir_is_removed_and_a_live_one_kept(tmp_path):
    out = tmp_path / "probe"
    stale = tmp_path / ".probe.999999.partial"
    stale.mkdir()
    (stale / "curves.jsonl").write_text("{}\n")
    live = tmp_path / ".probe.1.partial"
    live.mkdir()
    proc = _holder(live)
    try:
        store.remove_stale_partials(out)
        assert not stale.exists() and live.is_dir()
    finally:
        proc.kill()
        proc.wait()


def test_a_second_staged_writer_of_the_same_out_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "probe"
    live = tmp_path / ".probe.1.partial"  # another process building `out`
    live.mkdir()
    proc = _holder(live)
    try:
        with pytest.raises(LaggrowError) as err:
            store.check_not_staged(out)
        assert f"--out {out}: in use by another laggrow process (pid {proc.pid})" in str(err.value)
        # and staged_dir itself, once its own directory is locked (two writers started together)
        with pytest.raises(LaggrowError, match=f"pid {proc.pid}"), store.staged_dir(out):
            raise AssertionError("not refused")
        assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    finally:
        proc.kill()
        proc.wait()
    with store.staged_dir(out):  # its holder is gone: a stale leftover, removed
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]


def test_fault_points_act_only_when_a_test_names_one():
    from laggrow import faults

    assert faults._parse(None) is None and faults._parse("") is None  # unset: `point` returns at once
    assert faults._parse("saved:30=SIGKILL") == ("saved", "30", "SIGKILL")
    assert faults._parse("staged=raise") == ("staged", None, "raise")
    with pytest.raises(LaggrowError, match=faults.ENV):
        faults._parse("after-save:6=SIGKILL")


def test_a_file_in_the_way_is_found_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LaggrowError, match="is a file"):
        store.check_writable_target(tmp_path / "f" / "run", "--out")
    with pytest.raises(LaggrowError, match="not a directory"):
        store.check_writable_target(tmp_path / "f", "--out")
    with pytest.raises(LaggrowError, match="not a directory"):
        store.ensure_dir(tmp_path / "f", "--out")
