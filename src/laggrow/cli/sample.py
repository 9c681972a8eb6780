"""`laggrow sample RUN --prompt TEXT`: continue a prompt with a run's model (a thin shell over
`laggrow.decode.sample_run`), to look at a model before and after growth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors

HELP = (
    "Continue --prompt with the model of the finished run RUN and print the text.\n\n"
    "The prompt is encoded with the run's tokenizer; the new tokens are drawn one at a time with a "
    "key/value cache in one compiled loop. --temperature 0 is greedy (the most likely token each "
    "time); --top-k K draws among the K most likely only; --seed makes a draw repeatable. With "
    "learned positions prompt and new tokens fit in model.max_seq_len; with RoPE the prompt does, and "
    "new tokens may go past it (a warning says so)."
)


@user_errors
def sample_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A finished laggrow run directory.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The text to continue.")],
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="New tokens to generate [default: 64, or as many as fit the context with "
        "learned positions].")] = None,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Softmax temperature; 0: greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Draw among the K most likely tokens only; 0: all.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws (in [0, 2**32 - 1]).")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON object (text, prompt and new token ids, settings) instead.")] = False,
) -> None:
    """Continue --prompt with the model of the finished run RUN and print the text."""
    import json
    import sys

    from laggrow.decode import sample_run

    result = sample_run(run, prompt, max_tokens, temperature, top_k, seed)
    if result["past_context"]:
        print(f"warning: {len(result['prompt_ids'])} prompt and {result['max_tokens']} new tokens pass "
              f"model.max_seq_len ({result['max_seq_len']}): RoPE positions the model never trained on",
              file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(result["text"])


def register(app: typer.Typer) -> None:
    app.command("sample", help=HELP)(sample_command)
