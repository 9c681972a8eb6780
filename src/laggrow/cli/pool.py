"""`laggrow probe` and `laggrow train-final`: LAG on a pool of grown candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import OUT_HELP_METAVAR, out_dir


def _print_ranking(console, rows: list[dict], step: int, title: str) -> None:
    from laggrow.report.tables import ranking_table

    loss_set = rows[0].get("loss_set", "held-out") if rows else "held-out"
    console.print(ranking_table(rows, title=f"{title} ({loss_set}-set loss at step {step})"))


def _halving(console, cfg, pool_file: Path, out: Path) -> None:
    from laggrow.cli.progress import pool_progress
    from laggrow.pool.halving_trainer import run_halving

    if not cfg.halving:
        from laggrow.errors import LaggrowError

        raise LaggrowError(f"pool {pool_file}: no halving key (expected halving: {{eta: 2, first: K0}} "
                           "for --halving)")
    last = cfg.halving_budgets()[-1][0]
    state = {}

    def on_start(cfg, candidates):
        h = cfg.halving
        console.print(f"[bold]laggrow probe --halving[/] {pool_file}: {len(cfg.strategies)} strategies x "
                      f"{len(cfg.seeds)} seeds, eta {h['eta']}, first {h['first']}, predictor {h['predictor']}")
        state["progress"], state["on_eval"] = pool_progress(console, last)
        state["progress"].start()

    try:
        record = run_halving(cfg, out, pool_file=pool_file, on_eval=lambda s, r: state["on_eval"](s, r),
                             on_start=on_start)
    finally:
        if "progress" in state:
            state["progress"].stop()
    for r in record["rounds"]:
        console.print(f"step {r['steps']}: kept {', '.join(r['kept'])}; dropped {', '.join(r['dropped']) or '-'}",
                      highlight=False)
    everyone_k = record["probe_everyone_k"]
    console.print(f"winner: {record['winner']}, for {record['candidate_steps']:,} candidate-steps "
                  f"({100 * record['fraction_of_train_everyone']:.3g}% of training everyone to T; probing everyone "
                  f"k = {everyone_k['k']} steps costs {everyone_k['candidate_steps']:,})", highlight=False)
    console.print(f"written to {out}: curves.jsonl, halving.json", highlight=False)


@user_errors
def probe_command(
    pool: Annotated[Path, typer.Argument(help="Pool YAML: source run, target, strategies, lag_steps, final_steps.")],
    out: Annotated[str, typer.Option("--out", metavar=OUT_HELP_METAVAR, help="Pool directory to create.")],
    halving: Annotated[bool, typer.Option(
        "--halving", help="Successive halving instead (the pool's halving key: eta, first, predictor): "
        "train all K0 steps, keep the best 1/eta, continue those, until one strategy remains.")] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="The device layout: mesh.candidates=N, mesh.data=M, mesh.fsdp=true (repeatable).")] = None,
) -> None:
    """Grow every candidate of POOL and train them all lag_steps steps in one vmapped program; rank them."""
    import dataclasses

    from rich.console import Console

    from laggrow.cli.progress import pool_progress
    from laggrow.config import with_mesh_overrides
    from laggrow.pool import trainer
    from laggrow.pool.spec import load_pool_config

    console = Console()
    out = out_dir(out)
    state = {}

    def on_start(cfg, candidates):
        console.print(f"[bold]laggrow probe[/] {pool}: {len(candidates)} candidates "
                      f"({len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds), k={cfg.lag_steps}, "
                      f"T={cfg.final_steps}")
        state["progress"], state["on_eval"] = pool_progress(console, cfg.lag_steps)
        state["progress"].start()
        state["k"] = cfg.lag_steps

    pool_cfg = load_pool_config(pool)
    pool_cfg = dataclasses.replace(pool_cfg, mesh=with_mesh_overrides(pool_cfg.mesh, overrides))
    if halving:
        _halving(console, pool_cfg, pool, out)
        return
    try:
        rows = trainer.probe(pool_cfg, out, pool_file=pool,
                           on_eval=lambda s, r: state["on_eval"](s, r), on_start=on_start)
    finally:
        if "progress" in state:
            state["progress"].stop()
    _print_ranking(console, rows, state["k"], "LAG ranking after the probe")
    console.print(f"written to {out}: curves.jsonl, probe.json, probe_state/")


@user_errors
def train_final_command(
    directory: Annotated[Path, typer.Argument(help="A pool directory written by laggrow probe.")],
    steps: Annotated[int | None, typer.Option("--steps", help="Stop at this step [default: final_steps].")] = None,
    only: Annotated[int | None, typer.Option("--only", help="Continue only the best N candidates at k.")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="The device layout, if not the probe's: mesh.candidates=N, mesh.data=M, mesh.fsdp=true "
        "(repeatable).")] = None,
) -> None:
    """Continue the probed candidates to the full budget (resumable); rank them at T."""
    from rich.console import Console

    from laggrow.cli.progress import pool_progress
    from laggrow.config import with_mesh_overrides
    from laggrow.pool import trainer

    console = Console()
    pool, _, _ = trainer.read_pool_dir(directory)
    stop = pool.final_steps if steps is None else steps
    progress, show = pool_progress(console, stop)

    started = []

    def on_eval(step: int, records: list[dict]) -> None:
        if not started:  # shown from the first evaluation: a refused request prints one line only
            progress.start()
            started.append(True)
        show(step, records)

    try:
        rows = trainer.train_final(directory, steps=steps, only=only, on_eval=on_eval,
                                 mesh_cfg=with_mesh_overrides(pool.mesh, overrides))
    finally:
        if started:
            progress.stop()
    if rows is None:
        console.print(f"paused at step {stop}; run laggrow train-final {directory} again to continue")
        return
    _print_ranking(console, rows, pool.final_steps, "Final ranking")
    console.print(f"written to {directory}: final.json, curves.jsonl")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_command)
    app.command("train-final")(train_final_command)
