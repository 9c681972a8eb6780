"""Correlating a pool directory: its lock, its curves, the analysis and the files written, as
one function that `laggrow correlate` and `laggrow run`'s correlate stage both call, so that the
two cannot drift apart (which lock, which outputs, when a probe-only pool gets ranking stability).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laggrow import store
from laggrow.errors import KeyValueError

if TYPE_CHECKING:
    from laggrow.analysis.curves import Curves


@dataclass(frozen=True)
class Correlated:
    """What was made: `result` is correlation.json's record, or the ranking's stability when the
    pool has no finals (`stability`); `written` the files, all written together."""

    curves: Curves
    result: dict[str, Any]
    stability: bool
    written: list[Path]


def correlate_pool(directory: Path, *, final_step: int | None = None, threshold: float = 0.9,
                   regret_tol: float | None = None, n_boot: int = 1000, seed: int = 0, predictor: str = "loss",
                   halving: dict[str, int] | None = None) -> Correlated:
    """Correlate the pool in `directory` (or of its curves.jsonl) and write correlation.json, .csv
    and the figures; a pool with a probe but no finals (and no `final_step` asked for) gets the
    ranking's stability and curves.png, ranks.png instead. Holds the pool directory's lock, as
    train-final does (taking it also removes a killed writer's temporaries); not on a missing path,
    which it would create. A `halving` replay of a pool without finals is one line about key
    `halving.first` (a `KeyValueError`, which a caller names its own way)."""
    from laggrow import analysis
    from laggrow.report.writer import write_correlation, write_stability

    directory = Path(directory)
    pool_dir = directory if directory.is_dir() else directory.parent
    with contextlib.ExitStack() as held:
        if pool_dir.is_dir():
            held.enter_context(store.DirLock(pool_dir, "pool directory"))
        curves = analysis.load_curves(directory)
        out_dir = Path(curves.source).parent
        if final_step is None and not analysis.has_finals(curves):
            if halving is not None:  # it replays halving on curves to T: a probe has none
                raise KeyValueError("halving.first", f"{directory} holds no finals to replay successive halving "
                                    f"on (expected curves to T; run laggrow train-final {directory} first)")
            stability = analysis.ranking_stability(curves).to_dict()
            return Correlated(curves, stability, True, write_stability(curves, stability, out_dir))
        result = analysis.full_correlation(curves, final_step=final_step, threshold=threshold, regret_tol=regret_tol,
                                           n_boot=n_boot, seed=seed, predictor=predictor, halving=halving)
        return Correlated(curves, result, False, write_correlation(curves, result, out_dir))
