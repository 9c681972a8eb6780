"""A pool's records: the curves.jsonl record of each candidate at an evaluated step, the
ranking of candidates by held-out loss at a step (probe.json, final.json), and the checked
reading of a pool directory's records back (no jax here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import formats, store
from laggrow.errors import LaggrowError

# Per-window losses are written to this many significant digits: far below any difference a
# ranking can resolve, and about half the bytes of a float64's repr.
WINDOW_DIGITS = 7

# Which evaluation set each record field holds (data.split_heldout): `eval_loss` is the selection
# set's, read by every choice; `test_loss` the test set's, read by every reported result.
EVAL_FIELDS = {"selection": "eval", "test": "test"}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _window_fields(prefix: str, windows: np.ndarray) -> dict[str, Any]:
    """`{prefix}_loss` (the mean over windows), `{prefix}_loss_se` (its standard error over
    windows) and `{prefix}_windows` (every window's loss); nulls for a diverged candidate."""
    if not np.isfinite(windows).all():
        return {f"{prefix}_loss": None, f"{prefix}_loss_se": None, f"{prefix}_windows": None}
    se = windows.std(ddof=1) / np.sqrt(len(windows)) if len(windows) > 1 else np.nan
    return {f"{prefix}_loss": float(windows.mean()), f"{prefix}_loss_se": _finite(se),
            f"{prefix}_windows": [float(f"{w:.{WINDOW_DIGITS}g}") for w in windows]}


def make_records(candidates: list[dict], step: int, evals: dict[str, np.ndarray], train_losses: np.ndarray,
                 state: dict, flops_per_step: float, tokens_per_step: int) -> list[dict]:
    """curves.jsonl records: the loss of every evaluation set in `evals` (name -> (N, windows),
    see EVAL_FIELDS) with its standard error and its windows; tokens and flops count the steps
    each candidate really trained."""
    trained = np.asarray(state["step"])
    diverged = np.asarray(state["diverged_at"]) >= 0
    out = []
    for i, c in enumerate(candidates):
        record = {"candidate": c["candidate"], "strategy": c["strategy"], "seed": c["seed"], "step": step}
        for name, windows in evals.items():
            record.update(_window_fields(EVAL_FIELDS[name], windows[i]))
        record.update({
            "train_loss": None if step == 0 else _finite(train_losses[i]),
            "tokens": int(trained[i]) * tokens_per_step, "flops": float(trained[i]) * flops_per_step,
            "diverged": bool(diverged[i]),
        })
        out.append(record)
    return out


def ranking(candidates: list[dict], records: list[dict], step: int, by: str = "eval_loss") -> list[dict]:
    """Candidates ranked by the loss `by` at `step` (diverged last), with their loss at init:
    the selection set's (`eval_loss`) for the probe's choice, the test set's (`test_loss`) for
    the final ranking, a result. Each row holds `loss` (what it was ranked by) and `loss_set`."""
    at = {(r["candidate"], r["step"]): r for r in records}
    rows = []
    for c in candidates:
        rec, init = at.get((c["candidate"], step)), at.get((c["candidate"], 0))
        loss = rec.get(by) if rec else None
        rows.append({"candidate": c["candidate"], "strategy": c["strategy"], "seed": c["seed"],
                     "function_preserving": c["function_preserving"],
                     "eval_loss_init": init["eval_loss"] if init else None,
                     "eval_loss": rec["eval_loss"] if rec else None, "test_loss": rec.get("test_loss") if rec else None,
                     "loss": loss, "loss_set": "test" if by == "test_loss" else "selection",
                     "diverged": bool(rec["diverged"]) if rec else True})
    rows.sort(key=lambda r: (r["diverged"] or r["loss"] is None, r["loss"] or 0.0))
    best = rows[0]["loss"] if rows and not rows[0]["diverged"] else None
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["gap"] = None if best is None or row["loss"] is None else row["loss"] - best
    return rows


# ---- reading a pool directory back --------------------------------------------------------------
# train-final, laggrow run and the report continue from these files, so each is checked on the
# way in: a damaged one is one line naming it, found before anything is written.

CANDIDATE_KEYS = ("candidate", "strategy", "seed", "name", "options", "lr_scale", "function_preserving")


def as_json(obj: Any) -> Any:
    """`obj` as it reads back from a JSON file (tuples as lists, non-finite numbers as null)."""
    return json.loads(store.dumps(obj))


# Keys that say how a pool is trained, not what it is: a pool that fits trains identically in one
# chunk or several (to float rounding), so a changed chunk_size never makes it another pool (and a
# pool.json written when the default was 0 matches the default auto of today).
# The same for the device layout (mesh): records do not depend on it beyond float rounding.
EXECUTION_KEYS = ("chunk_size", "mesh")


def changed_keys(stored: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The top-level keys whose values differ between a pool stored in pool.json and a pool's
    `to_dict()`, both compared as JSON (a tuple and the list it was stored as are equal), leaving
    out `ignore` and the execution keys."""
    a, b = as_json(stored), as_json(current)
    skip = set(ignore) | set(EXECUTION_KEYS)
    return [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_pool_record(directory: Path) -> dict:
    """pool.json: the resolved pool, its fingerprint, its source and its candidates."""
    path = Path(directory) / store.POOL_FILE
    what = "pool record written by laggrow probe"
    meta = formats.migrate(store.read_json(path, what), path, what, formats.POOL)
    store.require_keys(meta, ("pool", "candidates", "source"), path, what)
    if not isinstance(meta["pool"], dict):
        raise LaggrowError(f"{path}: 'pool' must be a mapping (the resolved pool), got {type(meta['pool']).__name__}")
    if not isinstance(meta["source"], str) or not meta["source"]:
        raise LaggrowError(f"{path}: 'source' must be the path of the source run, got {meta['source']!r}")
    if meta.get("pool_file") is not None and not isinstance(meta["pool_file"], str):
        raise LaggrowError(f"{path}: 'pool_file' must be a path or null, got {meta['pool_file']!r}")
    candidates = meta["candidates"]
    if not isinstance(candidates, list) or not candidates:
        raise LaggrowError(f"{path}: 'candidates' must be a non-empty list, got {candidates!r:.60}")
    for i, c in enumerate(candidates):
        if not isinstance(c, dict):
            raise LaggrowError(f"{path}: candidates[{i}] must be a mapping, got {c!r:.60}")
        store.require_keys(c, CANDIDATE_KEYS, path, f"{what}, candidates[{i}]")
        if c["candidate"] != i or not _is_int(c["seed"]) or not isinstance(c["strategy"], str) \
                or not isinstance(c["options"], dict):
            raise LaggrowError(f"{path}: candidates[{i}] is damaged (expected candidate {i} with an integer "
                               "seed, a strategy name and options)")
    return meta


def read_ranking(path: Path, n_candidates: int, what: str) -> dict:
    """probe.json or final.json: lag_steps, final_steps and the ranked candidates."""
    meta = store.require_keys(store.read_json(path, what), ("lag_steps", "final_steps", "candidates"), path, what)
    rows = meta["candidates"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) and _is_int(r.get("candidate"))
                                             and 0 <= r["candidate"] < n_candidates for r in rows):
        raise LaggrowError(f"{path}: 'candidates' must list ranked candidates 0..{n_candidates - 1} "
                           f"(expected the {what}; is it damaged?)")
    return meta


def read_selection(path: Path, n_candidates: int) -> list[int]:
    """final_state/selection.json: the candidates train-final continues."""
    what = "candidates train-final continues"
    selected = store.require_keys(store.read_json(path, what), ("candidates",), path, what)["candidates"]
    if not isinstance(selected, list) or not selected or not all(_is_int(i) and 0 <= i < n_candidates
                                                                 for i in selected) \
            or len(set(selected)) != len(selected):
        raise LaggrowError(f"{path}: 'candidates' must be distinct candidate indices in [0, {n_candidates}), "
                           f"got {selected!r:.60}")
    return selected


def read_pool_curves(path: Path) -> list[dict]:
    """curves.jsonl as records, each with an integer candidate and step, read by `store`'s one
    JSONL reader as `analysis.curves` reads them: a torn last line, left by a killed writer, is
    skipped, and NaN is a loss (a divergence, as null), not damage."""
    records = store.read_jsonl(path, "pool records", allow_nan=True)
    for number, r in enumerate(records, start=1):
        if not (_is_int(r.get("candidate")) and _is_int(r.get("step"))):
            raise LaggrowError(f"{path} record {number}: expected integer 'candidate' and 'step' "
                               "(the file is damaged)")
    return records
