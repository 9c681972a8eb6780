"""The shape of every record report.md and the figures are rendered from, checked when it is read.

A record laggrow wrote holds exactly these keys and types; one edited or damaged by hand may not.
`writer.py` checks each record here before anything is rendered, so a damaged record is one line
naming the file, the key and what was expected, and the renderers can trust what they are given:
an exception raised while rendering is a bug in laggrow, reported with its traceback, never taken
for the user's damaged file.

A spec is a kind (`NUM`, `INT`, `STR`, `BOOL`), `opt(spec)` (null allowed), `list_of(spec)`,
`map_of(spec)` (any keys, every value of `spec`), or a dict of the keys required (others allowed).
Only what the renderers read is required: records of older laggrows with extra keys still render.
`analysis.curves` checks a pool's curves.jsonl records here too: one checker of a record's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laggrow.config_engine import shown
from laggrow.errors import LaggrowError


@dataclass(frozen=True)
class _Kind:
    name: str

    def accepts(self, value: Any) -> bool:
        if self.name == "a number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.name == "an integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if self.name == "a non-negative integer":
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if self.name == "a string":
            return isinstance(value, str)
        if self.name == "a non-empty string":
            return isinstance(value, str) and bool(value)
        return isinstance(value, bool)


NUM, INT, STR, BOOL = _Kind("a number"), _Kind("an integer"), _Kind("a string"), _Kind("true or false")
COUNT, NAME = _Kind("a non-negative integer"), _Kind("a non-empty string")


@dataclass(frozen=True)
class _Optional:
    spec: Any


@dataclass(frozen=True)
class _ListOf:
    spec: Any
    length: int | None = None
    nonempty: bool = False


@dataclass(frozen=True)
class _MapOf:
    spec: Any


def opt(spec: Any) -> _Optional:
    return _Optional(spec)


def list_of(spec: Any, length: int | None = None, nonempty: bool = False) -> _ListOf:
    return _ListOf(spec, length, nonempty)


def map_of(spec: Any) -> _MapOf:
    return _MapOf(spec)


_MISSING = object()  # what a mismatch got for a key that is not there


class _Mismatch(Exception):
    def __init__(self, where: str, expected: str, got: Any):
        super().__init__(where)
        self.where, self.expected, self.got = where, expected, got


def _describe(spec: Any) -> str:
    if isinstance(spec, _Kind):
        return spec.name
    if isinstance(spec, _Optional):
        return f"{_describe(spec.spec)} or null"
    if isinstance(spec, _ListOf):
        return f"a list of {spec.length} items" if spec.length is not None else \
            "a non-empty list" if spec.nonempty else "a list"
    return "a mapping"


def _check(value: Any, spec: Any, where: str) -> None:
    if isinstance(spec, _Optional):
        if value is not None:
            _check(value, spec.spec, where)
        return
    if isinstance(spec, _Kind):
        if not spec.accepts(value):
            raise _Mismatch(where, spec.name, value)
        return
    if isinstance(spec, _ListOf):
        if not isinstance(value, list) or (spec.length is not None and len(value) != spec.length) \
                or (spec.nonempty and not value):
            raise _Mismatch(where, _describe(spec), value)
        for i, item in enumerate(value):
            _check(item, spec.spec, f"{where}[{i}]")
        return
    if not isinstance(value, dict):
        raise _Mismatch(where, "a mapping", value)
    if isinstance(spec, _MapOf):
        for key, item in value.items():
            _check(item, spec.spec, f"{where}.{key}")
        return
    for key, inner in spec.items():
        if key not in value:
            raise _Mismatch(f"{where}.{key}" if where else key, "a value", _MISSING)
        _check(value[key], inner, f"{where}.{key}" if where else key)


def check(value: Any, spec: Any, path: Path | str, what: str, optional: dict[str, Any] | None = None) -> Any:
    """`value` if it has the shape of `spec`, else one line naming `path`, the key and what was
    expected. `optional` (for a mapping): keys that may be absent, checked when present. This is
    laggrow's one checker of a record's shape: every reader of a JSON record it did not just make
    (report.md's records, a pool's curves) checks it here."""
    try:
        _check(value, spec, "")
        if optional:
            _check(value, {k: s for k, s in optional.items() if k in value}, "")
    except _Mismatch as err:
        if err.got is _MISSING:
            raise LaggrowError(f"{path}: missing {err.where} (expected the {what}; is it damaged?)") from None
        raise LaggrowError(f"{path}: {err.where or 'the record'}: expected {err.expected}, got {shown(err.got, 40)} "
                           f"(expected the {what}; is it damaged?)") from None
    return value


def damaged(path: Path | str, where: str, expected: str, what: str) -> LaggrowError:
    """The one line of a record whose parts do not agree with each other (a name that is not one
    of its strategies, lists of two lengths)."""
    return LaggrowError(f"{path}: {where}: expected {expected} (expected the {what}; is it damaged?)")


# ---- an experiment directory (laggrow run) ----------------------------------------------------------

EXPERIMENT = {"experiment_file": STR, "experiment_given": STR, "out_given": STR}

SUMMARY = {"params": INT, "steps": INT, "tokens": INT, "final_eval_loss": NUM, "heldout_unigram_entropy": NUM,
           "seconds": NUM, "tokens_per_second": NUM}

POOL_RECORD = {"pool": {"strategies": list_of({}), "seeds": list_of(INT), "optimizer_state": STR},
               "candidates": list_of({}),
               "evaluation": opt({"selection_documents": INT, "selection_windows": INT, "window_tokens": INT,
                                  "test_documents": INT, "test_windows": INT, "overlapping": list_of(STR)})}

_PICK = {"leaders": list_of(STR), "in_best_set": opt(NUM), "regret": opt(NUM), "top1": opt(NUM)}
_ROW = {**_PICK, "step": INT, "spearman": opt(NUM), "spearman_ci": opt(list_of(NUM, 2)), "kendall": opt(NUM),
        "regret_frac": opt(NUM), "compute_fraction": opt(NUM), "settled": BOOL}
_AT = opt({"spearman": opt(NUM), "top1": opt(NUM), "in_best_set": opt(NUM), "regret": opt(NUM)})
CORRELATION = {
    "lag_steps": opt(INT), "final_step": INT, "steps": list_of(INT), "predictor": STR, "notes": list_of(STR),
    "strategies": list_of({"strategy": STR, "final_loss": NUM, "final_loss_sd": opt(NUM), "final_rank": opt(NUM),
                           "loss": list_of(opt(NUM)), "rank": list_of(opt(NUM)), "function_preserving": opt(BOOL),
                           "in_best_set": BOOL, "seeds": list_of(INT)}),
    "excluded": list_of({"strategy": STR, "seed": INT, "reason": STR}),
    "best_set": {"best": STR, "members": list_of(STR), "rule": STR, "z": NUM,
                 "comparisons": list_of({"strategy": STR, "loss": NUM, "diff": opt(NUM), "seed_se": opt(NUM),
                                         "eval_se": opt(NUM), "indistinguishable": BOOL})},
    "noise": {"eval_se_of_a_loss": opt(NUM), "eval_se_of_a_difference": opt(NUM), "windows": opt(INT),
              "seed_se_of_a_difference": opt(NUM), "seeds": INT, "eval_below_seed_noise": opt(BOOL),
              "reported_on": STR},
    "rows": list_of(_ROW),
    "bootstrap": {"ci_level": NUM, "n": INT, "resampled": STR},
    "little_lag": {"step": opt(INT), "threshold": NUM, "rule": STR, "compute_fraction": opt(NUM),
                   "compute_basis": STR, "spread_of": STR},
}
# optional parts, checked when present
INIT = {**_ROW, "function_preserving": list_of(STR)}
PREDICTORS = {"lag_steps": opt(INT), "final_step": INT, "threshold": NUM, "rule": STR,
              "predictors": list_of({"predictor": STR, "summary": STR, "at_init": _AT, "at_k": _AT,
                                     "little_lag": opt(INT), "little_lag_compute": opt(NUM)})}
FELL_BACK = {"step": INT, "candidates": INT, "fell_back": INT, "reasons": map_of(INT)}
HALVING = {"eta": INT, "first": INT, "predictor": STR, "winner": STR, "in_best_set": BOOL, "regret": NUM,
           "candidate_steps": INT, "fraction_of_train_everyone": NUM,
           "probe_everyone_k": {"k": opt(INT), "candidate_steps": opt(INT), "in_best_set": opt(NUM),
                                "regret": opt(NUM)},
           "rounds": list_of({"steps": INT, "kept": list_of(STR)})}


def check_correlation(result: Any, path: Path, what: str) -> dict:
    """correlation.json as report.md and the terminal read it: its parts, and that its strategy
    names, steps and per-step lists agree with each other."""
    check(result, CORRELATION, path, what)
    for key, spec in (("init", INIT), ("predictors", PREDICTORS), ("halving", HALVING)):
        if result.get(key) is not None:
            check(result[key], spec, path, f"{what}'s {key}")
    for p in (result.get("predictors") or {}).get("predictors", []):
        if p.get("fell_back_at_k") is not None:  # absent from records made before it was recorded
            check(p["fell_back_at_k"], FELL_BACK, path, f"{what}'s predictors")
    names = {s["strategy"] for s in result["strategies"]}
    n_steps = len(result["steps"])
    for i, s in enumerate(result["strategies"]):
        if len(s["loss"]) != n_steps or len(s["rank"]) != n_steps:
            raise damaged(path, f"strategies[{i}]", f"a loss and a rank at each of the {n_steps} steps", what)
    picks = [*result["rows"], *([result["init"]] if result.get("init") else [])]
    named = [result["best_set"]["best"], *result["best_set"]["members"],
             *(c["strategy"] for c in result["best_set"]["comparisons"]), *(n for r in picks for n in r["leaders"])]
    unknown = sorted({n for n in named if n not in names})
    if unknown:
        raise damaged(path, f"strategy {shown(unknown[0], 40)}", f"one of its strategies ({', '.join(sorted(names))})",
                      what)
    return result


# ---- a stacking directory (laggrow stack) -------------------------------------------------------------

_CANDIDATE = {"name": STR, "score": opt(NUM), "selection_loss_at_growth": opt(NUM),
              "selection_probe_loss": opt(NUM), "selection_probe_loss_se": opt(NUM), "diverged": BOOL}
STACK = {
    "config": {"run": {"model": {"n_layers": INT, "d_model": INT, "n_heads": INT, "d_ff": INT},
                       "data": {"corpus": STR, "tokenizer": STR, "seq_len": INT},
                       "train": {"batch_size": INT, "lr": NUM, "schedule": STR}},
               "stack": {"block": INT, "alpha": NUM, "optimizer_state": STR, "probe_steps": INT,
                         "candidates": list_of(STR), "predictor": STR}},
    "final_steps": INT,
    "stages": list_of({"stage": INT, "depth": INT, "steps": INT, "start": INT, "end": INT}),
    "budget": {"flops": NUM, "basis": STR, "target_step_flops": NUM, "methods": map_of({"steps": INT, "flops": NUM})},
    "evaluation": {"selection_documents": INT, "selection_tokens": INT, "test_documents": INT, "test_tokens": INT,
                   "windows": INT, "window_tokens": INT},
    "seeds": list_of(INT), "methods": list_of(STR),
    "runs": list_of({"method": STR, "seed": INT, "steps": INT, "final_test_loss": opt(NUM),
                     "final_test_windows": list_of(NUM),
                     "compute": {"total_flops": NUM, "total_tokens": NUM},
                     "choices": list_of({"stage": INT, "depth": INT, "chosen": STR, "tied": list_of(STR),
                                         "top": STR, "middle": STR, "candidates": list_of(_CANDIDATE)})}),
}
STACK_ROW = {"method": STR, "seed": INT, "step": INT, "point": STR, "flops": NUM, "test_loss": opt(NUM)}


def check_stack(record: Any, rows: list[Any], path: Path, curves: Path, what: str) -> dict:
    """stack.json and curves.jsonl as report.md and stack.png read them: every part's type, every
    run of a listed method with a budget, and rows of every run in curves.jsonl (an empty or missing
    file would render curves of nothing, and FLOPs saved that no curve measured)."""
    check(record, STACK, path, what)
    methods = record["methods"]
    for m in methods:
        if m not in record["budget"]["methods"]:
            raise damaged(path, "budget.methods", f"a budget for every method ({m} has none)", what)
    for i, run in enumerate(record["runs"]):
        if run["method"] not in methods:
            raise damaged(path, f"runs[{i}].method", f"one of the methods ({', '.join(methods)})", what)
    for i, row in enumerate(rows):
        check(row, STACK_ROW, curves, f"stacking curves (line {i + 1}: one row per evaluation)")
    have = {(r["method"], r["seed"]) for r in rows}
    missing = [f"{run['method']} seed {run['seed']}" for run in record["runs"]
               if (run["method"], run["seed"]) not in have]
    if missing:
        found = "is missing" if not Path(curves).exists() else "has no rows" if not rows else \
            f"has no rows of {', '.join(missing[:3])}"
        raise LaggrowError(f"{curves}: {found} (expected every evaluation of every run in {Path(path).name}, as "
                           "laggrow stack writes them; is it damaged?)")
    return record
