"""A pool's records on disk, as arrays: the reading side of the contract with probe / train-final.

`curves.jsonl` holds one JSON object per candidate per evaluated step, appended by `laggrow probe`
(steps 0..k) and `laggrow train-final` (steps > k up to T). Every (candidate, step) appears once:
a resumed train-final first rewrites the file up to the step it restored, so a second record of one
is damage (an edit, a file concatenated), named by its line rather than silently preferred.
A null or non-finite `eval_loss`, or `"diverged": true`,
marks the step a candidate diverged on; nothing it logs from there on is ranked. `probe.json` /
`final.json` are optional and only lend `lag_steps`, `final_steps` and `function_preserving`.

Two evaluation sets (data.split_heldout): `eval_loss` is the selection set's loss (what every choice
reads), `test_loss` the test set's (what results are reported on); `eval_windows` / `test_windows`
hold the loss of every window, for the evaluation noise of differences. A pool reads its test set at
T only. Records written before the held-out set was split have only `eval_loss` (the whole held-out
set) and their pool.json no `evaluation` record: `Curves.split` is then False.

Which step is "final": with a known `lag_steps`, the pool has finals when some candidate has a
finite loss beyond it; without probe.json, when more than one evaluated step has a finite loss.
The final step is then the largest step with a finite loss, unless one is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import record_schema as schema
from laggrow import store
from laggrow.errors import LaggrowError
from laggrow.store import CURVES_FILE

# ---- records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    candidate: int
    strategy: str
    seed: int
    function_preserving: bool | None
    diverged_at: int | None  # first step flagged diverged or without a finite eval loss


@dataclass
class Curves:
    """A pool's records as arrays: rows are candidates, columns the evaluated steps (ascending)."""

    source: str
    steps: np.ndarray
    candidates: list[Candidate]
    loss: np.ndarray  # selection-set loss; NaN where not evaluated, and from the step a candidate diverged on
    flops: np.ndarray  # cumulative training FLOPs; NaN where not recorded
    tokens: np.ndarray
    lag_steps: int | None = None
    final_steps: int | None = None
    test: np.ndarray | None = None  # test-set loss, as `loss`; None when no record has one
    windows: np.ndarray | None = None  # (candidates, steps, windows) selection per-window losses, or None
    test_windows: np.ndarray | None = None  # the same on the test set
    split: bool = False  # the records come from a pool that evaluates a selection and a test set
    # file name -> sha256 of the files read (curves.jsonl, probe.json, final.json): what a result made
    # from these records was made from, so that it can tell whether it is still current
    inputs: dict[str, str] = field(default_factory=dict)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _loss_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


# a record's shape (record_schema.py, the one checker of records): what a ranking reads, and the
# optional parts, checked when present
RECORD = {"candidate": schema.COUNT, "strategy": schema.NAME, "seed": schema.INT, "step": schema.COUNT,
          "eval_loss": schema.opt(schema.NUM)}
OPTIONAL = {"test_loss": schema.opt(schema.NUM), "flops": schema.opt(schema.NUM), "tokens": schema.opt(schema.NUM),
            "eval_windows": schema.opt(schema.list_of(schema.NUM, nonempty=True)),
            "test_windows": schema.opt(schema.list_of(schema.NUM, nonempty=True)),
            "diverged": schema.opt(schema.BOOL)}


def _parse_record(obj: dict, where: str) -> dict:
    schema.check(obj, RECORD, where, "per-step record written by laggrow probe", OPTIONAL)
    loss = math.nan if obj["eval_loss"] is None else float(obj["eval_loss"])
    return {"candidate": obj["candidate"], "strategy": obj["strategy"], "seed": obj["seed"],
            "step": obj["step"], "loss": loss,
            # a null or non-finite loss is a divergence whatever the flag says: there is nothing to rank
            "diverged": bool(obj.get("diverged")) or not math.isfinite(loss),
            "flops": math.nan if obj.get("flops") is None else float(obj["flops"]),
            "tokens": math.nan if obj.get("tokens") is None else float(obj["tokens"]),
            # None: no test set recorded; NaN: a test loss that is null (the candidate diverged)
            "test": None if "test_loss" not in obj else _loss_or_nan(obj["test_loss"]),
            "eval_windows": obj.get("eval_windows"), "test_windows": obj.get("test_windows")}


def _read_meta(directory: Path) -> tuple[int | None, int | None, dict[int, bool]]:
    """lag_steps, final_steps and function_preserving from probe.json / final.json, if present."""
    lag, final, preserving = None, None, {}
    for name in (store.PROBE_FILE, store.FINAL_FILE):  # final.json last: its final_steps is the one that ran
        path = directory / name
        if not path.is_file():
            continue
        meta = store.read_json(path, "ranking laggrow wrote (an object with lag_steps and final_steps)")
        for key in ("lag_steps", "final_steps"):
            if meta.get(key) is not None and not (isinstance(meta[key], int) and meta[key] >= 0):
                raise LaggrowError(f"{path}: '{key}' must be a non-negative integer, got {meta[key]!r}")
        lag = meta.get("lag_steps", lag) if name == store.PROBE_FILE else lag
        final = meta.get("final_steps") if meta.get("final_steps") is not None else final
        for entry in meta.get("candidates") or []:
            if isinstance(entry, dict) and isinstance(entry.get("function_preserving"), bool):
                preserving[entry.get("candidate")] = entry["function_preserving"]
    return lag, final, preserving


def load_curves(path: str | Path) -> Curves:
    """Read a pool directory (or its curves.jsonl). A (candidate, step) recorded twice is damage."""
    path = Path(path)
    if not path.exists():
        raise LaggrowError(f"{path}: not found; expected a pool directory holding {CURVES_FILE}")
    if path.is_dir() and (path / store.STACK_CONFIG_FILE).is_file():
        raise LaggrowError(f"{path}: a stacking directory (laggrow stack), not a pool; expected a pool directory "
                           f"written by laggrow probe (a stacking directory's results: laggrow report {path})")
    file = path / CURVES_FILE if path.is_dir() else path
    if not file.is_file():
        raise LaggrowError(f"{file}: not found; expected the per-step records written by `laggrow probe`")
    latest: dict[tuple[int, int], dict] = {}
    line_of: dict[tuple[int, int], int] = {}
    identity: dict[int, tuple[str, int, int]] = {}
    owner: dict[tuple[str, int], int] = {}
    # the one reader of laggrow's JSONL files: its rule for a torn last line (skipped) is every reader's
    for lineno, obj in store.read_jsonl_lines(file, "per-step records written by laggrow probe", allow_nan=True):
        where = f"{file.name} line {lineno}"
        rec = _parse_record(obj, where)
        cand, key = rec["candidate"], (rec["strategy"], rec["seed"])
        first = identity.setdefault(cand, (*key, lineno))
        if first[:2] != key or owner.setdefault(key, cand) != cand:
            raise LaggrowError(f"{where}: candidate {cand} is strategy {key[0]!r} seed {key[1]}, but "
                               f"line {first[2]} says {first[0]!r} seed {first[1]}; expected one "
                               "candidate index per (strategy, seed)")
        at = (cand, rec["step"])
        if at in latest:
            raise LaggrowError(f"{where}: candidate {cand} ({key[0]!r} seed {key[1]}) at step {rec['step']} "
                               f"again (first at line {line_of[at]}); expected one record per candidate and "
                               "step (is the file damaged?)")
        latest[at], line_of[at] = rec, lineno
    if not latest:
        raise LaggrowError(f"{file}: no records; expected one JSON object per candidate per evaluated step")
    lag, final, preserving = _read_meta(file.parent)
    ids = sorted(identity)
    steps = np.array(sorted({s for _, s in latest}))
    row, col = {c: i for i, c in enumerate(ids)}, {s: j for j, s in enumerate(steps)}
    loss, flops, tokens, test = (np.full((len(ids), len(steps)), np.nan) for _ in range(4))
    windows = {key: _window_array(latest, key, file, row, col, len(steps)) for key in ("eval_windows", "test_windows")}
    has_test = any(rec["test"] is not None for rec in latest.values())
    diverged_at: dict[int, int] = {}
    for (cand, step), rec in latest.items():
        i, j = row[cand], col[step]
        loss[i, j], flops[i, j], tokens[i, j] = rec["loss"], rec["flops"], rec["tokens"]
        test[i, j] = math.nan if rec["test"] is None else rec["test"]
        if rec["diverged"]:
            diverged_at[cand] = min(step, diverged_at.get(cand, step))
    candidates = []
    for cand in ids:
        if cand in diverged_at:  # whatever was logged after a divergence is not a loss to rank
            after = steps >= diverged_at[cand]
            for array in (loss, test, *(w for w in windows.values() if w is not None)):
                array[row[cand], after] = np.nan
        candidates.append(Candidate(cand, identity[cand][0], identity[cand][1], preserving.get(cand),
                                    diverged_at.get(cand)))
    split = has_test or _pool_has_split(file.parent)
    return Curves(str(file), steps, candidates, loss, flops, tokens, lag, final, test if has_test else None,
                  windows["eval_windows"], windows["test_windows"], split, input_digests(file))


def input_digests(file: Path) -> dict[str, str]:
    """The sha256 of a pool's curves file and of the probe.json / final.json beside it (those present):
    what a correlation is made from."""
    file = Path(file)
    digests = {CURVES_FILE: store.sha256_of(file)}
    for name in (store.PROBE_FILE, store.FINAL_FILE):
        if (file.parent / name).is_file():
            digests[name] = store.sha256_of(file.parent / name)
    return digests


def _pool_has_split(directory: Path) -> bool:
    """Whether pool.json (when there is one) records the selection / test split of the held-out set."""
    path = directory / store.POOL_FILE
    if not path.is_file():
        return False
    meta = store.read_json(path, "pool record written by laggrow probe")
    return isinstance(meta, dict) and isinstance(meta.get("evaluation"), dict)


def _window_array(latest: dict[tuple[int, int], dict], key: str, file: Path, row: dict[int, int],
                  col: dict[int, int], n_steps: int) -> np.ndarray | None:
    """(candidates, steps, windows) per-window losses from the records' `key` list, NaN where a
    record has none; None when no record has one. Every list must have one length (the set's
    windows): another is a damaged record."""
    lengths = {len(rec[key]) for rec in latest.values() if rec[key] is not None}
    if not lengths:
        return None
    if len(lengths) > 1:
        raise LaggrowError(f"{file}: the records' '{key}' lists have "
                           f"{sorted(lengths)} entries; expected one per window of the evaluation set, the same "
                           "in every record (is the file damaged?)")
    out = np.full((len(row), n_steps, lengths.pop()), np.nan)
    for (cand, step), rec in latest.items():
        if rec[key] is not None:
            out[row[cand], col[step]] = rec[key]
    return out


# ---- which step is final ----------------------------------------------------------------------

def steps_with_loss(curves: Curves) -> np.ndarray:
    return curves.steps[np.isfinite(curves.loss).any(axis=0)]


def has_finals(curves: Curves) -> bool:
    """Whether train-final has left records: see the module docstring for the rule."""
    reached = steps_with_loss(curves)
    if curves.lag_steps is not None:
        return bool((reached > curves.lag_steps).any())
    return len(reached) > 1


def resolve_final_step(curves: Curves, final_step: int | None = None) -> int:
    reached = steps_with_loss(curves)
    if final_step is not None:
        if final_step not in reached:
            raise LaggrowError(f"final step {final_step}: no candidate has an eval loss there; "
                               f"expected one of the evaluated steps {_step_list(reached)}")
        if not (reached < final_step).any():  # nothing to rank against it: a trivial correlation
            raise LaggrowError(f"final step {final_step}: no evaluated step before it; expected a later one of "
                               f"the evaluated steps {_step_list(reached)}")
        return int(final_step)
    if not has_finals(curves):
        seen = f"beyond the probe's lag of {curves.lag_steps} steps" if curves.lag_steps is not None \
            else "at more than one step"
        raise LaggrowError(f"{curves.source}: no eval losses {seen}; "
                           "correlation against the final loss needs `laggrow train-final`")
    return int(reached.max())


def _step_list(steps: np.ndarray) -> str:
    shown = [int(s) for s in steps]
    return str(shown) if len(shown) <= 12 else f"[{shown[0]}, {shown[1]}, ..., {shown[-1]}]"
