"""Successive halving over growth strategies: a pure scheduler over a loss oracle, no training here.

Rounds r = 0, 1, ...: every survivor is trained to the budget B_r = min(first * eta**r, final_step)
steps since growth (cumulative), scored by a predictor (see predictors.py) on its curve up to B_r, and
the best ceil(n / eta) are kept. It stops when one survivor remains, or after the round whose budget
reached final_step, where the best score wins. Rules, also visible in the records:

- Ties in score are broken by the order of `candidates` (a stable sort): survivors always keep that
  order, and `kept` / `dropped` of a round are listed best first.
- The oracle `curve(candidate, B)` returns the candidate's evaluated (steps, losses) with step <= B.
  Non-finite losses are dropped before scoring. A candidate without a finite loss *at* B (it diverged,
  or B was not evaluated) cannot be ranked with the others: its score is +inf, so it goes last. Every
  budget must therefore be an evaluated step; `halving_budgets` lists them before any training. A
  round where no survivor has a finite loss at its budget raises LaggrowError.
- Compute is charged candidate by candidate: the budget of the last round it took part in (steps are
  cumulative, so a survivor is not charged twice for the steps it already had). The winner's steps
  are those of the last round; training it on to final_step is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from laggrow.analysis.predictors import get_predictor
from laggrow.config_engine import require
from laggrow.errors import LaggrowError

CurveOracle = Callable[[str, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class HalvingRound:
    round: int
    steps: int  # the budget B_r every survivor was trained to
    survivors: list[str]  # before the cut, in candidate order
    scores: dict[str, float]  # +inf where the candidate had no finite loss at `steps`
    kept: list[str]  # best first
    dropped: list[str]  # best first


@dataclass
class HalvingResult:
    predictor: str
    eta: int
    first: int
    final_step: int
    rounds: list[HalvingRound]
    charged: dict[str, int]  # steps each candidate was trained, in candidate order
    total_steps: int
    winner: str
    unranked: list[str] = field(default_factory=list)  # scored +inf in some round: no finite loss at its budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite score becomes None (JSON has no infinity)."""
        def finite(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None
        return {
            "predictor": self.predictor, "eta": self.eta, "first": self.first, "final_step": self.final_step,
            "rounds": [{"round": r.round, "steps": r.steps, "survivors": list(r.survivors),
                        "scores": {k: finite(v) for k, v in r.scores.items()},
                        "kept": list(r.kept), "dropped": list(r.dropped)} for r in self.rounds],
            "charged": dict(self.charged), "total_steps": self.total_steps, "winner": self.winner,
            "unranked": list(self.unranked),
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _validate(n: int, eta: Any, first: Any, final_step: Any) -> None:
    require(_is_int(final_step) and final_step >= 1, "halving.final_step", "an integer >= 1", final_step)
    require(_is_int(eta) and eta >= 2, "halving.eta", "an integer >= 2", eta)
    require(_is_int(first) and 1 <= first <= final_step, "halving.first",
            f"an integer in [1, final_steps={final_step}]", first)
    require(n >= 2, "halving.candidates", "at least 2 candidates", n)


def halving_budgets(n: int, eta: int, first: int, final_step: int) -> list[tuple[int, int]]:
    """(B_r, survivors trained to B_r) for every round, to plan evaluation steps and compute up front.
    Assumes every candidate gets a finite loss at every budget (a diverged one changes no count)."""
    _validate(n, eta, first, final_step)
    plan, budget = [], first
    while True:
        plan.append((budget, n))
        n = math.ceil(n / eta)
        if n == 1 or budget == final_step:
            return plan
        budget = min(budget * eta, final_step)


def _score(curve: CurveOracle, fn, name: str, budget: int, final_step: int) -> float:
    steps, losses = (np.asarray(a) for a in curve(name, budget))
    keep = np.isfinite(losses) & (steps <= budget)
    steps, losses = steps[keep], losses[keep]
    if len(steps) == 0 or steps[-1] != budget:
        return math.inf
    score = float(fn(steps, losses, final_step))
    return score if math.isfinite(score) else math.inf


def successive_halving(candidates: Sequence[str], curve: CurveOracle, eta: int, first: int, final_step: int,
                       predictor: str = "loss",
                       before_round: Callable[[list[str], int], None] | None = None) -> HalvingResult:
    """Run successive halving over `candidates` with the oracle `curve(candidate, B) -> (steps, losses)`.
    `before_round(survivors, B)`, when given, is called before each round is scored: a trainer
    advances exactly the survivors to B there, so the oracle then reads what it recorded."""
    candidates = list(candidates)
    require(len(set(candidates)) == len(candidates), "halving.candidates", "distinct candidate names", candidates)
    plan = halving_budgets(len(candidates), eta, first, final_step)
    fn = get_predictor(predictor).fn
    survivors, charged, rounds, unranked = candidates, dict.fromkeys(candidates, 0), [], []
    for r, (budget, _) in enumerate(plan):
        if before_round is not None:
            before_round(list(survivors), budget)
        scores = {c: _score(curve, fn, c, budget, final_step) for c in survivors}
        if all(v == math.inf for v in scores.values()):  # nothing to rank: a budget that was not evaluated
            raise LaggrowError(f"halving: no survivor has a finite loss at step {budget} (every budget must be "
                               f"an evaluated step: {', '.join(str(b) for b, _ in plan)})")
        ranked = sorted(survivors, key=lambda c: scores[c])  # stable: ties keep candidate order
        n_keep = 1 if r == len(plan) - 1 else math.ceil(len(survivors) / eta)
        rounds.append(HalvingRound(r, budget, list(survivors), scores, ranked[:n_keep], ranked[n_keep:]))
        for c in survivors:
            charged[c] = budget
        unranked += [c for c in survivors if scores[c] == math.inf and c not in unranked]
        survivors = [c for c in candidates if c in set(ranked[:n_keep])]
    return HalvingResult(predictor, int(eta), int(first), int(final_step), rounds, charged,
                         sum(charged.values()), survivors[0], unranked)


def curve_from_matrix(names: Sequence[str], steps: np.ndarray, loss_matrix: np.ndarray) -> CurveOracle:
    """An oracle over recorded curves (rows of `loss_matrix` named by `names`, columns at `steps`, NaN
    where not evaluated): replays a pool that was trained to the end, to ask what halving would have picked."""
    steps = np.asarray(steps)
    loss_matrix = np.asarray(loss_matrix, dtype=float)
    if loss_matrix.shape != (len(names), len(steps)):
        raise ValueError(f"curve_from_matrix: {len(names)} names and {len(steps)} steps do not match "
                         f"the loss matrix {loss_matrix.shape}")
    if len(set(names)) != len(names):
        raise ValueError("curve_from_matrix: names must be distinct")
    rows = dict(zip(names, loss_matrix, strict=True))

    def curve(name: str, budget: int) -> tuple[np.ndarray, np.ndarray]:
        row = rows[name]
        seen = (steps <= budget) & np.isfinite(row)
        return steps[seen], row[seen]

    return curve
