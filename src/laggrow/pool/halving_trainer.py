"""Successive halving, trained: `laggrow probe POOL --halving` (the pool's `halving` key).

Every strategy's candidates (all its seeds) are grown and trained together to the first budget,
the best 1/eta strategies by the chosen predictor are kept, only those are trained on to the next
budget, and so on until one strategy remains (analysis/halving.py decides; this module trains).
Since every protocol keeps a candidate's run the same whatever else is trained beside it, the
records are the prefixes of the full pool's curves, and `laggrow correlate --halving-first` on a
pool trained to T replays exactly these decisions.

A halving directory holds pool.json, config.json, curves.jsonl (every evaluated step of every
candidate while it took part) and halving.json: the rounds (budget, survivors, scores, kept,
dropped), the steps, tokens and FLOPs charged candidate by candidate, the total, and the same
compute for probing everyone k steps and for training everyone to T. It is written into a staging
directory renamed at the end, as a probe is: an interrupted run leaves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import hosts, interrupt, run_dir, store
from laggrow.analysis.halving import successive_halving
from laggrow.analysis.predictors import score_curves
from laggrow.errors import LaggrowError
from laggrow.pool import records
from laggrow.pool.spec import PoolConfig
from laggrow.pool.step import take
from laggrow.pool.trainer import (
    OnEval,
    check_pool,
    check_probe_inputs,
    grow_candidates,
    placement_for,
    run_segments,
    runner_for,
    write_pool_records,
)


def strategy_curve(curves: list[dict], members: list[int], budget: int, final_step: int,
                   predictor: str) -> tuple[np.ndarray, np.ndarray]:
    """One strategy's score curve up to `budget`: the mean over its candidates (seeds) of the
    predictor applied to each candidate's recorded curve, as the replay in analysis/comparison.py
    scores it. NaN where a candidate has no finite loss (diverged)."""
    steps = sorted({r["step"] for r in curves if r["candidate"] in members and r["step"] <= budget})
    column = {s: j for j, s in enumerate(steps)}
    loss = np.full((len(members), len(steps)), np.nan)
    for r in curves:
        if r["candidate"] in members and r["step"] in column and r.get("eval_loss") is not None \
                and not r.get("diverged"):
            loss[members.index(r["candidate"]), column[r["step"]]] = r["eval_loss"]
    scores = score_curves(np.asarray(steps), loss, final_step, predictor)
    return np.asarray(steps), scores.mean(axis=0)


def run_halving(pool: PoolConfig, out: Path, pool_file: Path | None = None, on_eval: OnEval | None = None,
                on_start: Callable[[PoolConfig, list[dict]], None] | None = None) -> dict[str, Any]:
    """Grow every candidate and run successive halving over the strategies; returns halving.json's
    record. Interrupted (Ctrl-C, SIGTERM), it writes nothing."""
    if not pool.halving:
        raise LaggrowError("pool: no halving key (expected halving: {eta: 2, first: K0} for --halving)")
    check_probe_inputs(pool, out)
    source = run_dir.load_run(Path(pool.source), what="pool source")
    target = pool.target_run_config(source.config)
    candidates = check_pool(pool, source.config, target)
    data = run_dir.load_source_dataset(source)
    eta, first, predictor = pool.halving["eta"], pool.halving["first"], pool.halving["predictor"]
    members = {spec.label: [c["candidate"] for c in candidates if c["strategy"] == spec.label]
               for spec in pool.strategies}
    if on_start is not None:
        on_start(pool, candidates)
    tokens_per_step, flops = target.model.train_step_compute(target.train.batch_size, target.data.seq_len)
    flops_per_step = float(flops)
    with interrupt.deferred(), store.staged_dir(out) as tmp:
        write_pool_records(tmp, pool, pool_file, source, target, candidates, data,
                           placement_for(pool, target, len(candidates)), halving=True)
        curves_path = tmp / store.CURVES_FILE
        eval_steps = pool.eval_steps()
        trained = {"state": grow_candidates(pool, source, target, candidates),
                   "rows": [c["candidate"] for c in candidates], "at": 0}

        def before_round(survivors: list[str], budget: int) -> None:
            """Train exactly the surviving strategies' candidates from where they are to `budget`."""
            rows = sorted(i for s in survivors for i in members[s])
            state = trained["state"]
            if rows != trained["rows"]:
                state = take(state, [trained["rows"].index(i) for i in rows])
            chosen = [candidates[i] for i in rows]
            runner = runner_for(pool, target, data, chosen, int(source.data_position))
            state, reached = run_segments(runner, state, chosen, trained["at"], budget, eval_steps, target,
                                           curves_path, on_eval, should_stop=interrupt.requested)
            if reached < budget:  # leaving the block removes the staging directory
                raise interrupt.Interrupted("nothing written; run the halving again")
            trained.update(state=state, rows=rows, at=budget)

        read: dict[int, list[dict]] = {}  # the records once per round, not once per strategy

        def curve(strategy: str, budget: int) -> tuple[np.ndarray, np.ndarray]:
            if budget not in read:
                hosts.barrier(f"halving {out} {budget}")  # process 0 has written the round's records
                read[budget] = records.read_pool_curves(curves_path)
            return strategy_curve(read[budget], members[strategy], budget, pool.final_steps, predictor)

        # the oracle returns the predictor's score curve, so the scheduler compares its last value
        # strategies in sorted order, as the replay (analysis/comparison.py) takes them: ties break alike
        result = successive_halving(sorted(members), curve, eta, first, pool.final_steps, "loss", before_round)
        record = result.to_dict()
        n = len(candidates)
        charged = {c["candidate"]: result.charged[c["strategy"]] for c in candidates}
        steps = sum(charged.values())
        record.update({
            "predictor": predictor, "winner_candidates": members[result.winner],
            "charged_candidates": [{"candidate": i, "strategy": candidates[i]["strategy"],
                                    "seed": candidates[i]["seed"], "steps": s, "tokens": s * tokens_per_step,
                                    "flops": s * flops_per_step} for i, s in charged.items()],
            "candidate_steps": steps, "tokens": steps * tokens_per_step, "flops": steps * flops_per_step,
            "probe_everyone_k": {"k": pool.lag_steps, "candidate_steps": n * pool.lag_steps,
                                 "flops": n * pool.lag_steps * flops_per_step},
            "train_everyone": {"candidate_steps": n * pool.final_steps, "flops": n * pool.final_steps * flops_per_step},
            "fraction_of_train_everyone": steps / (n * pool.final_steps)})
        store.write_json(tmp / store.HALVING_FILE, record)
    return record
