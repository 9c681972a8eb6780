"""`laggrow grow`: grow a trained run into a larger model and write it as a new run (a thin
shell over `laggrow.jobs.growing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import OUT_HELP_METAVAR, out_dir
from laggrow.resources import SEED_MAX

HELP = (
    "Grow the trained run FROM with STRATEGY into a larger model, written as a new run in OUT.\n\n"
    "The target is the source's config with --set overrides (model.n_layers, model.d_model, "
    "model.n_heads, model.d_ff; train.* for later training).\n\n"
    "Depth strategies reach any n_layers >= the source's. Width strategies keep head_dim, so "
    "n_heads = d_model / head_dim: hypercloning needs integer factors of d_model and d_ff; net2net "
    "integer factors of d_model and any d_ff; zero_pad and random_pad any sizes; fusion exactly 2x. "
    "slices takes --ranges (its layers, totalling n_layers), dus 2L - 2*drop layers, block_expansion "
    "L + L/every. "
    "A llama's heads grow in whole key/value groups: set model.n_kv_heads with model.n_heads. "
    "Compose width and depth as WIDTH+DEPTH, e.g. hypercloning+stack_middle. "
    "`laggrow strategies` lists them all."
)


@user_errors
def grow_command(
    source: Annotated[Path, typer.Option("--from", help="A trained laggrow run directory.")],
    strategy: Annotated[str, typer.Option("--strategy", help="A strategy name, or WIDTH+DEPTH.")],
    out: Annotated[str, typer.Option("--out", metavar=OUT_HELP_METAVAR,
                                     help="The grown run's directory (must not exist).")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Target size and settings: section.key=value, e.g. model.n_layers=8 (repeatable).")] = None,
    optimizer_state: Annotated[str, typer.Option(
        "--optimizer-state", help="reset: a fresh AdamW state; carry: moments through the growth.")] = "reset",
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the growth's randomness.")] = 0,
    noise: Annotated[float | None, typer.Option(
        "--noise", help="Relative noise std (hypercloning, stack_noise).")] = None,
    block: Annotated[int | None, typer.Option(
        "--block", help="Layers per copied block (stack_top, stack_middle, stack_bottom, copy_zero).")] = None,
    partner: Annotated[Path | None, typer.Option(
        "--partner", help="fusion: a second run of the source's shape (default: a copy of the source).")] = None,
    ranges: Annotated[str | None, typer.Option(
        "--ranges", help="slices: source layer ranges as YAML, e.g. '[[0, 4], [2, 4, zero]]' "
                         "([start, stop) each; zero: output projections zeroed).")] = None,
    drop: Annotated[int | None, typer.Option(
        "--drop", help="dus: layers dropped at the seam, [0, L-drop) + [drop, L) (default: from n_layers).")] = None,
    every: Annotated[int | None, typer.Option(
        "--every", help="block_expansion: an identity copy after every this many layers "
                        "(default: from n_layers).")] = None,
) -> None:
    """Grow the trained run FROM with STRATEGY into a larger model, written as a new run in OUT."""
    from rich.console import Console

    from laggrow.jobs.growing import grow_run
    from laggrow.store import GROWTH_FILE

    out = out_dir(out)
    options = {"noise": noise, "block": block, "partner": str(partner) if partner is not None else None,
               "ranges": ranges, "drop": drop, "every": every}
    record = grow_run(source, strategy, out, overrides, optimizer_state, seed, options)
    console = Console()
    console.print(f"[bold]laggrow grow[/] {record['source']} -> {Path(out).absolute()}")
    for name in ("strategy", "function_preserving", "eval_loss_before", "eval_loss_after", "optimizer_state"):
        value = record[name]
        console.print(f"  {name:20s} {value:.4f}" if isinstance(value, float) else f"  {name:20s} {value}")
    console.print(f"  params {record['params_before']:,} -> {record['params_after']:,}; "
                  f"written: config.json, checkpoints/, {GROWTH_FILE}")


def register(app: typer.Typer) -> None:
    app.command("grow", help=HELP)(grow_command)
