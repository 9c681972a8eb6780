"""Every on-disk name of laggrow, the one atomic writer, and the locks.

A run, a pool and an experiment are directories; this module owns what they hold and how it is
written, so that no other module spells a file name or opens a file for writing:

    RUN/config.json      the full RunConfig              RUN/metrics.jsonl  one record per logged step
    RUN/data.json        the fingerprint of the data     RUN/summary.json   written last: the run finished
    RUN/tokenizer.json   the BPE tokenizer (bpe), or an imported model's (hf)   RUN/checkpoints/  Orbax checkpoints
    RUN/tokenizer_config.json   an imported model's special tokens (hf only)
    RUN/growth.json      how a grown run was made (laggrow grow)
    RUN/import.json      where an imported model came from (laggrow import)

    HF/config.json  HF/model.safetensors (or model-0000k-of-0000n.safetensors and their index)
    HF/tokenizer.json  HF/tokenizer_config.json  HF/generation_config.json   a Hugging Face model
    HF/laggrow-export.json   what laggrow export wrote it from (marks the directory as laggrow's)

    POOL/pool.json       the resolved pool               POOL/config.json   the grown model's run config
    POOL/curves.jsonl    one record per candidate per evaluated step
    POOL/probe.json      the ranking at k                POOL/probe_state/  all states at k
    POOL/final.json      the ranking at T                POOL/final_state/  train-final checkpoints
    POOL/correlation.{json,csv,png}, curves.png, ranks.png   laggrow correlate

    OUT/experiment.json  OUT/pool.yaml  OUT/timings.json  OUT/base/  OUT/pool/  OUT/report.md
    OUT/pools/NAME.yaml  OUT/pools/NAME/   each pool of an experiment with several (`pools:`)

Guarantees, each relied on elsewhere:

- A file is replaced whole or not at all (`write_text`, `write_json`): written beside its
  target, fsynced, renamed. A crash leaves the old file or the new one, never half of one.
- Records never hold the `NaN` or `Infinity` literals, which are not JSON: non-finite numbers
  are written as null (`json_safe`).
- A JSONL record file is only appended to; a torn last line (a process killed mid-write) is
  dropped when the file is next opened for writing (`append_jsonl`, `read_jsonl(repair=True)`).
- A directory being written is locked (`DirLock`, an flock that the kernel releases when its
  process dies, so a killed process never leaves a stale lock); a second writer gets one line.
- Outputs that only make sense together are staged and renamed into place together
  (`staged_dir`, `write_outputs`); a staged directory is flocked, so leftovers of a killed
  process are recognised and removed by the next one.
- Several processes (laggrow.hosts): process 0 alone writes, creates and locks; the others
  return from every writer at once (Orbax checkpoints, which every process writes its shards of,
  are laggrow.checkpoint's). A staged directory has one name on every process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from laggrow import faults, hosts
from laggrow.errors import LaggrowError

# ---- names -------------------------------------------------------------------------------------

# a run directory (laggrow train, laggrow grow)
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
DATA_FILE = "data.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_DIR = "checkpoints"
GROWTH_FILE = "growth.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # an imported model's special tokens, as Hugging Face names them
IMPORT_FILE = "import.json"  # laggrow import: the origin of the weights; no training happened

# a Hugging Face model directory (laggrow import reads one, laggrow export writes one); its
# config.json is CONFIG_FILE by name, Hugging Face's by meaning, and its tokenizer files are the names above
HF_WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_GENERATION_FILE = "generation_config.json"
EXPORT_FILE = "laggrow-export.json"  # laggrow export: the run it came from; a directory laggrow may replace


def hf_shard_name(index: int, count: int) -> str:
    """The name of weight shard `index` (from 1) of `count`, as Hugging Face numbers them."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


# a pool directory (laggrow probe, train-final, correlate); it also holds a CONFIG_FILE
POOL_FILE = "pool.json"
PROBE_FILE = "probe.json"
HALVING_FILE = "halving.json"  # laggrow probe --halving: the rounds and the compute charged
FINAL_FILE = "final.json"
CURVES_FILE = "curves.jsonl"
PROBE_STATE = "probe_state"
FINAL_STATE = "final_state"
SELECTION_FILE = "selection.json"  # inside FINAL_STATE: which candidates train-final continues
CORRELATION_FILE = "correlation.json"
CORRELATION_CSV = "correlation.csv"
CORRELATION_PNG = "correlation.png"
CURVES_PNG = "curves.png"
RANKS_PNG = "ranks.png"

# an experiment directory (laggrow run, laggrow report)
EXPERIMENT_FILE = "experiment.json"
TIMINGS_FILE = "timings.json"
REPORT_FILE = "report.md"
POOL_YAML = "pool.yaml"
BASE_DIR = "base"
POOL_DIR = "pool"
POOLS_DIR = "pools"  # an experiment of several pools: POOLS_DIR/NAME/ and POOLS_DIR/NAME.yaml
# a pool's name in an experiment of several: a directory name, no hidden or path-like one
POOL_NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]*"
GROWTH_CURVES_PNG = "curves-growth.png"


def experiment_pool_paths(name: str | None) -> tuple[str, str]:
    """Where a pool of an experiment lives, relative to OUT: (its directory, its YAML, beside it).
    `None` is the one pool of `pool:` (pool/, pool.yaml); a name is one of `pools:` (pools/NAME/,
    pools/NAME.yaml)."""
    if name is None:
        return POOL_DIR, POOL_YAML
    return f"{POOLS_DIR}/{name}", f"{POOLS_DIR}/{name}.yaml"


# a stacking directory (laggrow stack, laggrow report); it also holds a CURVES_FILE and a REPORT_FILE
STACK_CONFIG_FILE = "stack-config.json"  # the resolved run and stack sections the directory was made for
STACK_FILE = "stack.json"  # per method and seed: stages, choices, final loss, compute (written at the end)
STACK_PNG = "stack.png"  # held-out loss against FLOPs, every method
STAGES_DIR = "stages"  # stages/<method>-seed<s>/: the last completed stages' checkpoints and choices
CHOICES_FILE = "choices.jsonl"  # inside a STAGES_DIR entry: one record per completed stage
MODELS_DIR = "models"  # models/<method>-seed<s>/: each method's final model as a laggrow run

# A token directory (`laggrow tokenize`): its manifest, written last; the progress of an unfinished one;
# one token file per split (TOKEN_FILES); the train split's token counts (the unigram baseline).
TOKENS_MANIFEST_FILE = "tokens.json"
TOKENIZE_PROGRESS_FILE = "tokenize-progress.json"
TOKEN_FILES = {"train": "train.tokens", "heldout": "heldout.tokens", "selection": "selection.tokens",
               "test": "test.tokens"}
TRAIN_COUNTS_FILE = "train-counts.npy"

LOCK_FILE = ".laggrow.lock"
_TMP_SUFFIX = ".tmp"
_PARTIAL_SUFFIX = ".partial"


# ---- values ------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (recursively), so it is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """The one JSON encoding of laggrow's files: sorted keys, no NaN literal."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=indent is not None, allow_nan=False)


# ---- writing -----------------------------------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    # Hidden, beside the target (same filesystem, so the rename is atomic), and fixed: a writer
    # holds its directory's lock, so a leftover of this name is a dead writer's and is overwritten.
    return path.with_name(f".{path.name}{_TMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a temporary file beside `path`, then rename it onto `path`."""
    if not hosts.is_primary():
        return
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            # a write that fails at close (a full disk) names no file: the one line names the record
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from None
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str, *, if_changed: bool = False) -> bool:
    """Replace `path` by `text` atomically. With `if_changed`, an identical file is left alone
    (its mtime too). Returns whether the file was written."""
    if not hosts.is_primary():
        return False
    path = Path(path)
    if if_changed and path.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if path.read_text(encoding="utf-8") == text:
                return False
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return True


def write_json(path: Path, obj: Any, *, if_changed: bool = False) -> bool:
    return write_text(path, dumps(obj) + "\n", if_changed=if_changed)


def copy_file(source: Path, target: Path) -> None:
    """Copy `source` onto `target` atomically (a tokenizer kept beside a model)."""
    write_file(Path(target), lambda tmp: shutil.copyfile(source, tmp))


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, atomically (safetensors.numpy.save_file)."""
    from safetensors.numpy import save_file

    write_file(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append records, one JSON object a line, and flush them to disk. A torn last line left by
    a killed writer is cut off first, so the file stays a sequence of whole records."""
    path = Path(path)
    if not records:
        return
    if hosts.is_primary():
        if path.is_file():
            _truncate_torn_tail(path)
        with path.open("a", encoding="utf-8") as fh:
            fh.write("".join(dumps(r, indent=None) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())
    faults.point("record", records[-1].get("step"))


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    """Replace a JSONL file whole (a resume dropping the records past its checkpoint)."""
    write_text(path, "".join(dumps(r, indent=None) + "\n" for r in records))


def append_bytes(path: Path, parts: list[bytes]) -> None:
    """Append `parts` to a binary file (a token file being written) and flush them to disk."""
    with open(path, "ab") as fh:
        for part in parts:
            fh.write(part)
        fh.flush()
        os.fsync(fh.fileno())


def truncate_file(path: Path, size: int) -> None:
    """Cut a binary file back to `size` bytes (what a killed writer appended past its last commit),
    or create it empty."""
    with open(path, "ab") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def write_npy(path: Path, array: Any) -> None:
    """Write a numpy array as an .npy file, atomically."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    write_file(Path(path), write)


def write_outputs(directory: Path, writers: dict[str, str | Callable[[Path], None]]) -> list[Path]:
    """Write each output (a text, or a function that writes the file it is given) to a temporary
    file in `directory`, then rename them all into place. If any fails, every temporary file is
    removed and nothing is renamed."""
    directory = Path(directory)
    if not hosts.is_primary():
        return [directory / name for name in writers]
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            final = directory / name
            staged.append((_tmp_path(final), final))
            if isinstance(write, str):
                _tmp_path(final).write_text(write, encoding="utf-8")
            else:
                write(_tmp_path(final))
    except BaseException as err:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(err, OSError):
            raise LaggrowError(f"{directory}: cannot write {', '.join(writers)} ({err.strerror or err}); "
                               "expected a writable directory") from None
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    _fsync_dir(directory)
    return [final for _, final in staged]


def remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporary files a killed writer left in `directory`. Call it holding the lock."""
    directory = Path(directory)
    if directory.is_dir() and hosts.is_primary():
        for leftover in directory.glob(f".*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                leftover.unlink()


# ---- reading -----------------------------------------------------------------------------------


class UnexpectedJson(ValueError):
    """What laggrow never writes into a record: NaN or Infinity (not JSON; `json_safe` writes null),
    or an integer of more digits than Python converts (its error advises an interpreter setting)."""


_MAX_JSON_INT_DIGITS = 4000


def _json_constant(name: str) -> Any:
    raise UnexpectedJson(f"holds {name}, which is not JSON (laggrow writes a missing number as null)")


def _json_int(text: str) -> int:
    if len(text) > _MAX_JSON_INT_DIGITS:
        raise UnexpectedJson(f"holds an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def loads(text: str | bytes, *, allow_nan: bool = False) -> Any:
    """JSON as laggrow writes it: `json.loads`, refusing NaN and Infinity unless `allow_nan` (a
    format that gives them a meaning), and integers of thousands of digits (`UnexpectedJson`)."""
    return json.loads(text, parse_int=_json_int, **({} if allow_nan else {"parse_constant": _json_constant}))


def read_json(path: Path, what: str, expect: type = dict) -> Any:
    """A JSON file laggrow wrote, or one line naming it and what was wrong: missing, unreadable,
    not UTF-8, not JSON, or not the expected type (a dict unless told)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LaggrowError(f"{path}: not found (expected the {what})") from None
    except UnicodeDecodeError:
        raise LaggrowError(f"{path}: not UTF-8 text (expected the {what}, JSON)") from None
    except OSError as err:
        raise LaggrowError(f"{path}: cannot be read ({err.strerror}); expected the {what}") from None
    try:
        obj = loads(text)
    except json.JSONDecodeError as err:
        raise LaggrowError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}); expected the {what}") from None
    except UnexpectedJson as err:
        raise LaggrowError(f"{path}: {err}; expected the {what} (is it damaged?)") from None
    if not isinstance(obj, expect):
        raise LaggrowError(f"{path}: expected the {what} (a JSON {expect.__name__}), got {type(obj).__name__}")
    return obj


def require_keys(obj: dict, keys: tuple[str, ...] | list[str], path: Path, what: str) -> dict:
    """`obj` if it has every key, else one line naming the file and the missing keys."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise LaggrowError(f"{path}: missing {', '.join(missing)} (expected the {what}; is it damaged?)")
    return obj


def _truncate_torn_tail(path: Path) -> None:
    """Cut a JSONL file after its last newline: whatever follows is a record cut off mid-write."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        # walk back to the last newline (records are short; read in blocks from the end)
        end, keep = size, 0
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path, what: str, *, repair: bool = False, allow_nan: bool = False) -> list[dict]:
    """The records of a JSONL file (none if it does not exist). A last line without its newline
    was torn by a killed writer: it is skipped, and with `repair` cut from the file (do this
    only holding the directory's lock). A malformed complete line is damage: one line names it.
    `allow_nan`: NaN is a value (a pool's curves: a divergence), not damage."""
    return [record for _, record in read_jsonl_lines(path, what, repair=repair, allow_nan=allow_nan)]


def read_jsonl_lines(path: Path, what: str, *, repair: bool = False, allow_nan: bool = False) -> list[tuple[int, dict]]:
    """`read_jsonl`'s records with their line numbers (1-based, blank lines counted): the one
    reader of laggrow's JSONL files, for callers whose own checks name a record's line.

    The rule for a torn last line, the same for every reader: it is skipped (a reader cannot tell
    a writer killed mid-line from one still writing it, as `laggrow correlate` may read a pool
    train-final is appending to), and the next writer cuts it off (`append_jsonl`, `repair`)."""
    path = Path(path)
    if not path.is_file():
        return []
    if repair:
        _truncate_torn_tail(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise LaggrowError(f"{path}: cannot be read ({err.strerror}); expected the {what}") from None
    lines = raw.split(b"\n")
    lines = lines[:-1]  # after the last newline: empty, or a torn record
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads(line.decode("utf-8"), allow_nan=allow_nan)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LaggrowError(f"{path} line {number}: malformed (expected the {what}, one JSON object a line; "
                               "the file is damaged)") from None
        except UnexpectedJson as err:
            raise LaggrowError(f"{path} line {number}: {err}; expected the {what} (the file is damaged)") from None
        if not isinstance(record, dict):
            raise LaggrowError(f"{path} line {number}: expected a JSON object (the {what}), "
                               f"got {type(record).__name__}")
        records.append((number, record))
    return records


# ---- directories -------------------------------------------------------------------------------


def ensure_dir(path: Path, what: str) -> Path:
    """Create `path` (and its parents) or say in one line why it cannot be (process 0 only)."""
    path = Path(path)
    if not hosts.is_primary():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LaggrowError(f"{what} {path}: exists and is not a directory (expected a directory)") from None
    except OSError as err:
        raise LaggrowError(f"{what} {path}: cannot be created ({err.strerror})") from None
    if not path.is_dir():
        raise LaggrowError(f"{what} {path}: exists and is not a directory (expected a directory)")
    return path


def check_writable_target(path: Path, what: str) -> None:
    """Fail early, before any compute, when `path` could not be written: a file where a
    directory is expected, or a nearest existing ancestor that is not a writable directory."""
    path = Path(path).absolute()
    if path.is_symlink() and not path.exists():
        raise LaggrowError(f"{what} {path}: a symbolic link to {os.readlink(path)}, which does not exist "
                           "(expected a directory, or a link to one)")
    if path.exists() and not path.is_dir():
        raise LaggrowError(f"{what} {path}: exists and is not a directory (expected a directory)")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LaggrowError(f"{what} {path}: {ancestor} is a file, not a directory (expected a directory path)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LaggrowError(f"{what} {path}: {ancestor} is not writable (expected a writable directory)")


def check_outside_runs(path: Path, what: str) -> None:
    """One line when `path` lies inside a laggrow run or pool directory (one holding config.json):
    a run's directory holds its own files only, and what another command wrote there would be
    mixed with them (a probe into its source run, a grown run inside the run it grew from)."""
    path = Path(path).absolute()
    for parent in path.resolve().parents:
        if (parent / CONFIG_FILE).is_file():
            raise LaggrowError(f"{what} {path}: inside the laggrow run {parent} (expected a directory outside "
                               "any run or pool directory)")


def check_new_dir(path: Path, what: str) -> None:
    """`path` must not exist yet (not even as a dangling link) and must be creatable."""
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        raise LaggrowError(f"{what} {path}: already exists (expected a new directory)")
    check_writable_target(path, what)


class DirLock:
    """An exclusive lock on a directory that laggrow writes, held for the life of the process
    (or the `with` block). The kernel drops an flock when its holder dies, so a SIGKILLed run
    never leaves the directory locked; a second live writer gets one line and exit code 2."""

    def __init__(self, directory: Path, what: str = "directory"):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        if not hosts.is_primary():  # process 0 holds it for all of them
            return self
        ensure_dir(self.directory, self.what)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock_or_refuse(fd, self.directory, self.what)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        remove_stale_temporaries(self.directory)
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock_or_refuse(fd: int, directory: Path, what: str, holder_dir: Path | None = None) -> None:
    """Take the exclusive flock on an open lock file, or say in one line who holds it. The lock
    file is `holder_dir`'s (default `directory`'s); the line names `directory`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _read_pid((holder_dir or directory) / LOCK_FILE)
            by = f" (pid {holder})" if holder else ""
            raise LaggrowError(f"{what} {directory}: in use by another laggrow process{by}; "
                               "wait for it to finish or stop it first") from None
        raise


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip() or 0) or None
    return None


@contextlib.contextmanager
def staged_dir(out: Path, what: str = "--out", replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside `out`, renamed to `out` only if the block succeeds, so a
    failure (bad input found late, a crash, Ctrl-C) leaves nothing at `out`. The staging
    directory is flocked while in use: one left by a killed process is removed on the next try.

    With `replace`, an existing `out` (one the caller has checked is its own to replace: a
    previous `laggrow export`) is swapped for the new directory at the end: renamed aside as a
    staging directory of its own, so that if the process dies between the two renames the next
    attempt removes it and finds no `out` to trip over."""
    out = Path(out).absolute()
    if replace and (out.exists() or out.is_symlink()):
        check_writable_target(out, what)
    else:
        check_new_dir(out, what)
    # one name on every process (process 0's pid): they all write their checkpoint shards into it
    tmp = out.with_name(f".{out.name}.{hosts.agree(os.getpid())}{_PARTIAL_SUFFIX}")
    if not hosts.is_primary():
        hosts.barrier(f"staged {out}")  # process 0 has made it
        yield tmp
        hosts.barrier(f"staged {out} written")
        hosts.barrier(f"staged {out} renamed")
        return
    ensure_dir(out.parent, what)
    remove_stale_partials(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    lock = DirLock(tmp, what).acquire()
    try:
        # checked again once this one is locked: of two writers started together, the later to
        # lock sees the other's lock (and both may refuse; never do both go on)
        check_not_staged(out, what, mine=tmp)
        hosts.barrier(f"staged {out}")
        faults.point("staged", out.name)
        yield tmp
        hosts.barrier(f"staged {out} written")
        (tmp / LOCK_FILE).unlink()
        old = out.with_name(f".{out.name}.{os.getpid()}-replaced{_PARTIAL_SUFFIX}")
        if replace and out.is_dir():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        hosts.barrier(f"staged {out} renamed")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.release()


def check_not_staged(out: Path, what: str = "--out", mine: Path | None = None) -> None:
    """One line naming the holder's pid if a live process is building `out` in a staging
    directory (`staged_dir`), so that a second writer is refused at its start rather than after
    its work, when the first has renamed its directory into place. Creates and writes nothing;
    process 0 checks for all."""
    out = Path(out).absolute()
    if not hosts.is_primary() or not out.parent.is_dir():
        return
    for partial in out.parent.glob(f".{out.name}.*{_PARTIAL_SUFFIX}"):
        if mine is not None and partial == mine:
            continue
        try:
            fd = os.open(partial / LOCK_FILE, os.O_RDONLY)
        except OSError:
            continue  # no lock file (yet): not a writer this can name
        try:
            _flock_or_refuse(fd, out, what, holder_dir=partial)
        finally:
            os.close(fd)  # closing drops the flock, if this took it


def remove_stale_partials(out: Path) -> None:
    """Remove staging directories of `out` whose process is gone (their flock is free)."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return
    for partial in out.parent.glob(f".{out.name}.*{_PARTIAL_SUFFIX}"):
        lock = DirLock(partial)
        try:
            lock.acquire()
        except LaggrowError:
            continue  # a live process is still writing it
        except OSError:
            continue
        lock.release()
        shutil.rmtree(partial, ignore_errors=True)


# ---- checkpoint manifests and probing a lock (appended for checkpoint integrity) ---------------

# Inside each Orbax step directory: the sha256 and size of every file Orbax wrote there, and a
# fingerprint of the config the state belongs to. Written after the save is finalised, so a step
# without it was interrupted before laggrow could vouch for it.
CHECKPOINT_MANIFEST = "laggrow-manifest.json"


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes (read in blocks)."""
    import hashlib

    sha = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_digests(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative posix path: {"sha256", "size"}} of every regular file under `directory`,
    except the top-level names in `skip`."""
    import hashlib

    directory = Path(directory)
    digests: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.relative_to(directory).as_posix() in skip:
            continue
        sha = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
                size += len(block)
        digests[path.relative_to(directory).as_posix()] = {"sha256": sha.hexdigest(), "size": size}
    return digests


def fingerprint(obj: Any) -> str:
    """sha256 of `obj`'s canonical JSON: equal for equal configs, whatever their key order."""
    import hashlib

    text = obj if isinstance(obj, str) else json.dumps(json_safe(obj), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_unlocked(directory: Path, what: str = "directory") -> None:
    """One line if a live process holds `directory`'s DirLock; creates and writes nothing (a
    check made before the directory is known to be ours to write). Process 0 checks for all."""
    if not hosts.is_primary():
        return
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file, or none we could read: nobody to wait for
    try:
        _flock_or_refuse(fd, Path(directory), what)
    finally:
        os.close(fd)  # closing drops the probe's flock, if it got one
