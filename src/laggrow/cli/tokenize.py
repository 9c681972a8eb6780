"""`laggrow tokenize CORPUS`: a corpus into a token directory for `data.corpus: DATA_DIR` (a thin
shell over `laggrow.jobs.tokenizing`, with a progress bar)."""

from __future__ import annotations

from typing import Annotated

import typer

from laggrow.cli.errors import user_errors
from laggrow.cli.options import out_dir

HELP = (
    "Tokenize CORPUS (a .txt, .jsonl, .jsonl.gz or .parquet file, a folder of .txt files, kjv or "
    "shakespeare) into token files in --out, split into train and held-out documents as training "
    "splits them, on every CPU core. Train from it with data.corpus: DATA_DIR (and data.tokenizer "
    "the kind the tokenizer is: byte, bpe or hf); its files are memory-mapped, never loaded whole. "
    "Work is committed a chunk of documents at a time: run the same command again after a kill "
    "and it continues, with the same output as an uninterrupted run."
)


@user_errors
def tokenize_command(
    corpus: Annotated[str, typer.Argument(metavar="CORPUS", help="The corpus: a file, a folder, kjv or shakespeare.")],
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", metavar="SPEC",
        help="byte, a laggrow run directory (its tokenizer: byte, bpe or an imported model's), or a "
             "tokenizer.json file (used as data.tokenizer bpe).")],
    out: Annotated[str, typer.Option("--out", metavar="DATA_DIR", help="The token directory to write.")],
    text_field: Annotated[str, typer.Option("--text-field", help="The field (or parquet column) holding "
                                                                  "a document's text.")] = "text",
    heldout_fraction: Annotated[float, typer.Option(
        "--heldout-fraction", help="As data.heldout_fraction.")] = 0.02,
    split_seed: Annotated[int, typer.Option("--split-seed", help="As data.split_seed.")] = 0,
    chunk_docs: Annotated[int, typer.Option(
        "--chunk-docs", help="Documents per committed chunk (what a rerun after a kill redoes at most).")] = 2048,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Processes that tokenize [default: every CPU core].")] = None,
) -> None:
    """Tokenize CORPUS into a token directory."""
    from rich.console import Console

    from laggrow.cli.progress import TokenizeProgress
    from laggrow.jobs.tokenizing import tokenize_corpus

    console = Console(stderr=True)
    target = out_dir(out)
    with TokenizeProgress(console) as on_progress:
        manifest, already = tokenize_corpus(
            corpus, tokenizer, target, text_field=text_field, heldout_fraction=heldout_fraction,
            split_seed=split_seed, chunk_docs=chunk_docs, workers=workers, on_progress=on_progress)
    splits = manifest["splits"]
    state = "already tokenized; nothing to do" if already else "written"
    console.print(f"{target}: {state}: {manifest['documents']:,} documents, {splits['train']['tokens']:,} train "
                  f"and {splits['heldout']['tokens']:,} held-out tokens ({manifest['dtype']}, "
                  f"{manifest['tokenizer']['kind']} tokenizer)")


def register(app: typer.Typer) -> None:
    app.command("tokenize", help=HELP)(tokenize_command)
