"""`laggrow train`: train a model on a corpus, with Orbax checkpoints and resumption."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import OUT_HELP_METAVAR, out_dir


@user_errors
def train_command(
    config: Annotated[Path, typer.Argument(help="Run config YAML (sections model, data, train).")],
    out: Annotated[str | None, typer.Option("--out", metavar=OUT_HELP_METAVAR,
                                            help="Run directory [default: runs/<config name>].")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value: section.key=value (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the unfinished run in --out.")] = False,
    until: Annotated[int | None, typer.Option(
        "--until", min=1, help="Pause after this step (checkpointed); continue later with --resume.")] = None,
) -> None:
    """Train a model from CONFIG and write config.json, metrics.jsonl, checkpoints and summary.json."""
    import shlex

    from rich.console import Console

    from laggrow.cli.progress import TrainProgress
    from laggrow.config import load_run_config
    from laggrow.jobs.training import check_until, execute_run, prepare_run

    console = Console(stderr=True)
    out = out_dir(out)
    cfg = load_run_config(config, overrides)
    check_until(cfg, until)  # before the corpus is read
    out = out if out is not None else Path("runs") / config.stem
    run = prepare_run(cfg, out, resume)
    cfg = run.config
    if run.finished:
        summary = execute_run(run)  # under the run's lock: reads the summary, trains nothing
        console.print(f"{run.out}: already finished at step {summary['steps']} (held-out loss "
                      f"{summary['final_eval_loss']}); nothing to do (choose another --out to train again)")
        return
    sets = [part for item in overrides or [] for part in ("--set", item)]
    again = shlex.join(["laggrow", "train", str(config), "--out", str(out), *sets, "--resume"])
    console.print(
        f"[bold]laggrow train[/] {config} -> {run.out}: {cfg.model.n_params():,} params, "
        f"{cfg.model.n_layers} layers x d={cfg.model.d_model}, corpus {cfg.data.corpus} "
        f"({len(run.dataset.train):,} train tokens, {cfg.data.tokenizer} tokenizer)"
    )
    with TrainProgress(console, total=cfg.train.steps) as progress:
        summary = execute_run(run, until=until, on_record=progress.update, resume_command=again)
    status = "finished" if summary["complete"] else f"paused at step {summary['steps']} (--resume continues)"
    loss = summary["final_eval_loss"]
    console.print(
        f"{status}: held-out loss {loss:.4f} nats/token (unigram entropy "
        f"{summary['heldout_unigram_entropy']:.4f}), {summary['tokens_per_second']:,.0f} tokens/s"
        if loss is not None else f"{status}: {summary['tokens_per_second']:,.0f} tokens/s"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
