"""`laggrow eval RUN`: a run's held-out loss on its corpus or another, in nats per token and bits
per byte (a thin shell over `laggrow.jobs.evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors

HELP = (
    "The held-out loss of the finished run RUN: nats per token and bits per byte, each with its "
    "standard error over windows.\n\n"
    "On the run's own corpus by default, or on another (--set data.corpus=shakespeare, a .txt or "
    ".jsonl file, a folder), split and cut into windows by the data settings (--set data.KEY=VALUE), "
    "tokenized with the run's tokenizer. --on heldout (the default) reads windows spread over the "
    "whole held-out stream, as a training run evaluates; selection or test one half of the held-out "
    "documents, as pools and stacks choose and report."
)


@user_errors
def eval_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A finished laggrow run directory.")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Data to evaluate on: data.KEY=VALUE, e.g. data.corpus=shakespeare (repeatable).")] = None,
    on: Annotated[str, typer.Option("--on", help="Which held-out windows: heldout, selection or test.")] = "heldout",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON object (every window's loss included) instead.")] = False,
) -> None:
    """The held-out loss of the finished run RUN, in nats per token and bits per byte."""
    import json

    from laggrow.jobs.evaluation import evaluate_run

    result = evaluate_run(run, overrides, on)
    if as_json:
        print(json.dumps(result, indent=2))
        return

    def pm(value: float, se: float | None) -> str:
        return f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")

    print(f"laggrow eval {result['run']}: corpus {result['corpus']}, {result['set_name']} "
          f"({result['windows']} windows of {result['seq_len']} tokens, {result['bytes']:,} bytes, "
          f"{result['tokenizer']} tokenizer)")
    print(f"  loss           {pm(result['loss'], result['loss_se'])} nats/token")
    print(f"  bits per byte  {pm(result['bits_per_byte'], result['bits_per_byte_se'])}")


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_command)
