"""`laggrow grow`: grow a trained run into a larger model and write it as a new run.

    laggrow grow --from runs/small --strategy hypercloning+stack_middle \\
        --set model.n_layers=4 --set model.d_model=64 --set model.n_heads=8 --out runs/grown

The output is a laggrow run directory (config.json, checkpoints/ at step 0, the source's
tokenizer.json when it has one) plus growth.json: the strategy, the source, whether the growth
preserves the function, and the held-out loss of the small and of the grown model on the source
run's fixed evaluation batches. Every check runs before anything is written, and the run is
assembled in a temporary directory renamed at the end, so bad input leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from laggrow.commands import user_errors
from laggrow.errors import LaggrowError

GROWTH_FILE = "growth.json"

HELP = (
    "Grow the trained run FROM with STRATEGY into a larger model, written as a new run in OUT.\n\n"
    "The target is the source's config with --set overrides (model.n_layers, model.d_model, "
    "model.n_heads, model.d_ff; train.* for later training).\n\n"
    "Depth strategies reach any n_layers >= the source's. Width strategies keep head_dim, so "
    "n_heads = d_model / head_dim: hypercloning needs integer factors of d_model and d_ff; net2net "
    "integer factors of d_model and any d_ff; zero_pad and random_pad any sizes; fusion exactly 2x. "
    "Compose width and depth as WIDTH+DEPTH, e.g. hypercloning+stack_middle. "
    "`laggrow strategies` lists them all."
)


def target_config(source, overrides: list[str] | None):
    """The source's run config with `--set` overrides applied and validated."""
    from laggrow.config import apply_overrides, run_config_from_dict

    return run_config_from_dict(apply_overrides(source.to_dict(), overrides), where="target")


def grow_run(source_dir: Path, strategy: str, out: Path, overrides: list[str] | None = None,
             optimizer_state: str = "reset", seed: int = 0, options: dict[str, Any] | None = None) -> dict:
    """Grow `source_dir` into a new run at `out`; returns the growth.json record."""
    from laggrow import growth, runs

    options = {k: v for k, v in (options or {}).items() if v is not None}
    out = Path(out).absolute()
    if out.exists():
        raise LaggrowError(f"--out {out}: already exists (expected a new directory)")
    if optimizer_state not in ("reset", "carry"):
        raise LaggrowError(f"--optimizer-state: expected 'reset' or 'carry', got {optimizer_state!r}")
    source_cfg = runs.read_run_config(source_dir, what="--from")
    target = target_config(source_cfg, overrides)
    growth.plan_stages(source_cfg.model, target.model, strategy)
    partner_dir = options.pop("partner", None)
    # Checks the options now; a partner run stands in as an empty tree until it is loaded.
    preserving = growth.is_function_preserving(strategy, **options, **({"partner": {}} if partner_dir else {}))
    if partner_dir is not None:
        runs.read_run_config(Path(partner_dir), what="--partner")

    import jax

    from laggrow import train
    from laggrow.checkpoint import Checkpointer
    from laggrow.config import save_json
    from laggrow.data import TOKENIZER_FILE, load_dataset

    source = runs.load_run(Path(source_dir), what="--from")
    if partner_dir is not None:
        options["partner"] = runs.load_run(Path(partner_dir), what="--partner").params
    key = jax.random.key(seed)
    params = growth.grow(source.params, source.config.model, target.model, strategy, key, **options)
    if optimizer_state == "carry":
        opt_state = train.restart_schedule(growth.grow_opt_state(
            source.state["opt_state"], source.config.model, target.model, strategy, key, **options))
    else:
        opt_state = train.make_optimizer(target.train).init(params)

    data = load_dataset(source.config.data, source.path)
    batches = data.eval_batches(source.config.data.eval_batches, source.config.data.eval_batch_size)
    record = {
        "strategy": strategy,
        "source": str(source.path.absolute()),
        "source_step": int(source.state["step"]),
        "function_preserving": preserving,
        "eval_loss_before": train.evaluate(source.params, source.config.model, batches),
        "eval_loss_after": train.evaluate(params, target.model, batches),
        "optimizer_state": optimizer_state,
        "seed": seed,
        "options": {**{k: v for k, v in options.items() if k != "partner"},
                    **({"partner": str(Path(partner_dir).absolute())} if partner_dir else {})},
        "params_before": source.config.model.n_params(),
        "params_after": target.model.n_params(),
        "eval_batches": [int(n) for n in batches.shape],
    }
    with runs.staged_output(out) as tmp:
        save_json(tmp / runs.CONFIG_FILE, target.to_dict())
        if (source.path / TOKENIZER_FILE).is_file():
            shutil.copyfile(source.path / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        state = {"params": params, "opt_state": opt_state, "step": jax.numpy.zeros((), jax.numpy.int32)}
        with Checkpointer(tmp) as ckpt:
            ckpt.save(state, data_position=0, step=0)
        save_json(tmp / GROWTH_FILE, record)
    return record


@user_errors
def grow_command(
    source: Annotated[Path, typer.Option("--from", help="A trained laggrow run directory.")],
    strategy: Annotated[str, typer.Option("--strategy", help="A strategy name, or WIDTH+DEPTH.")],
    out: Annotated[Path, typer.Option("--out", help="The grown run's directory (must not exist).")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Target size and settings: section.key=value, e.g. model.n_layers=8 (repeatable).")] = None,
    optimizer_state: Annotated[str, typer.Option(
        "--optimizer-state", help="reset: a fresh AdamW state; carry: moments through the growth.")] = "reset",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the growth's randomness.")] = 0,
    noise: Annotated[float | None, typer.Option(
        "--noise", help="Relative noise std (hypercloning, stack_noise).")] = None,
    block: Annotated[int | None, typer.Option(
        "--block", help="Layers per copied block (stack_top, stack_middle, stack_bottom, copy_zero).")] = None,
    partner: Annotated[Path | None, typer.Option(
        "--partner", help="fusion: a second run of the source's shape (default: a copy of the source).")] = None,
) -> None:
    """Grow the trained run FROM with STRATEGY into a larger model, written as a new run in OUT."""
    from rich.console import Console

    options = {"noise": noise, "block": block, "partner": str(partner) if partner is not None else None}
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
