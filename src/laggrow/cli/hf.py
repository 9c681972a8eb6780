"""`laggrow import` and `laggrow export`: Hugging Face model directories in and out (thin shells
over `laggrow.hf.importer` and `laggrow.hf.exporter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import OUT_HELP_METAVAR, out_dir

IMPORT_HELP = (
    "Import the Hugging Face model in HF_DIR (config.json, model.safetensors or its shards with "
    "model.safetensors.index.json, tokenizer.json) as a laggrow run in OUT.\n\n"
    "model_type llama, mistral (no sliding window smaller than the context) or qwen2 (no sliding "
    "window). The run evaluates and trains on --set data.corpus=... (default kjv), tokenized by the "
    "model's own tokenizer; --set train.* is what `laggrow train OUT/config.json --out OUT --resume` "
    "continues pretraining with. Every command takes OUT as a source (grow --from, a pool's source)."
)
EXPORT_HELP = (
    "Export the Llama-family model in RUN as a Hugging Face model directory OUT that "
    "transformers.AutoModelForCausalLM.from_pretrained loads.\n\n"
    "RUN: a finished or freshly grown or imported run, a stacking method's model "
    "(STACK/models/<method>-seed<s>), or a pool with --candidate N (its candidate N at T). OUT must "
    "be new, or an earlier laggrow export (replaced)."
)


@user_errors
def import_command(
    hf_dir: Annotated[Path, typer.Argument(metavar="HF_DIR", help="A local Hugging Face model directory.")],
    out: Annotated[str, typer.Option("--out", metavar=OUT_HELP_METAVAR, help="The run's directory (must not exist).")],
    dtype: Annotated[str, typer.Option(
        "--dtype", help="keep: the weights' own dtype; float32 or bfloat16: converted.")] = "keep",
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="data.KEY=VALUE or train.KEY=VALUE (repeatable), e.g. data.corpus=my.txt.")] = None,
) -> None:
    """Import a Hugging Face model directory as a laggrow run."""
    from rich.console import Console

    from laggrow.hf.importer import import_model

    console = Console(stderr=True)
    out = out_dir(out)
    record = import_model(hf_dir, out, dtype, overrides, on_event=lambda line: console.print(f"  {line}"))
    stored = sorted(set(record["dtype"]["stored"].values()))
    console.print(f"[bold]laggrow import[/] {record['source']} -> {Path(out).absolute()}: {record['model_type']}, "
                  f"{record['params']:,} params stored as {'/'.join(stored)}; in a corpus, "
                  f"{record['tokenizer']['rule']}; laggrow trained nothing")


@user_errors
def export_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A laggrow run (or a pool, with --candidate).")],
    out: Annotated[str, typer.Option("--out", metavar=OUT_HELP_METAVAR,
                                     help="The Hugging Face directory (new, or an earlier laggrow export).")],
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")] = "float32",
    shard_size: Annotated[str | None, typer.Option(
        "--shard-size", metavar="SIZE", help="Largest weight file, e.g. 2GB, 500MB [default: 5GB].")] = None,
    candidate: Annotated[int | None, typer.Option(
        "--candidate", help="A pool's candidate (pool.json's index) to export, at T.")] = None,
) -> None:
    """Export a laggrow Llama-family model as a Hugging Face model directory."""
    from rich.console import Console

    from laggrow.hf.exporter import export_model

    out = out_dir(out)
    record = export_model(run, out, dtype, shard_size, candidate)
    Console(stderr=True).print(f"[bold]laggrow export[/] {record['source']}"
                               f"{'' if record.get('candidate') is None else ' candidate ' + str(record['candidate'])}"
                               f" -> {Path(out).absolute()}: {record['params']:,} params as {dtype}, "
                               f"{', '.join(record['files'])}")


def register(app: typer.Typer) -> None:
    app.command("import", help=IMPORT_HELP)(import_command)
    app.command("export", help=EXPORT_HELP)(export_command)
