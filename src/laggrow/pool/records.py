"""A pool's records: the curves.jsonl record of each candidate at an evaluated step, and the
ranking of candidates by held-out loss at a step (probe.json, final.json)."""

from __future__ import annotations

import numpy as np


def make_records(candidates: list[dict], step: int, eval_losses: np.ndarray, train_losses: np.ndarray,
                 state: dict, flops_per_step: float, tokens_per_step: int) -> list[dict]:
    """curves.jsonl records: tokens and flops count the steps each candidate really trained."""
    trained = np.asarray(state["step"])
    diverged = np.asarray(state["diverged_at"]) >= 0
    out = []
    for i, c in enumerate(candidates):
        def num(x):
            return None if not np.isfinite(x) else float(x)
        out.append({
            "candidate": c["candidate"], "strategy": c["strategy"], "seed": c["seed"], "step": step,
            "eval_loss": num(eval_losses[i]), "train_loss": None if step == 0 else num(train_losses[i]),
            "tokens": int(trained[i]) * tokens_per_step, "flops": float(trained[i]) * flops_per_step,
            "diverged": bool(diverged[i]),
        })
    return out


def ranking(candidates: list[dict], records: list[dict], step: int) -> list[dict]:
    """Candidates ranked by held-out loss at `step` (diverged last), with their loss at init."""
    at = {(r["candidate"], r["step"]): r for r in records}
    rows = []
    for c in candidates:
        rec, init = at.get((c["candidate"], step)), at.get((c["candidate"], 0))
        loss = rec["eval_loss"] if rec else None
        rows.append({"candidate": c["candidate"], "strategy": c["strategy"], "seed": c["seed"],
                     "function_preserving": c["function_preserving"],
                     "eval_loss_init": init["eval_loss"] if init else None,
                     "eval_loss": loss, "diverged": bool(rec["diverged"]) if rec else True})
    rows.sort(key=lambda r: (r["diverged"] or r["eval_loss"] is None, r["eval_loss"] or 0.0))
    best = rows[0]["eval_loss"] if rows and not rows[0]["diverged"] else None
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["gap"] = None if best is None or row["eval_loss"] is None else row["eval_loss"] - best
    return rows
