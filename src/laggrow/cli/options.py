"""Options several verbs share, read as the text the user typed: an empty `--out ""` would become
`Path(".")`, the working directory, once Typer had made it a path."""

from __future__ import annotations

from pathlib import Path

from laggrow.errors import LaggrowError

OUT_HELP_METAVAR = "DIR"


def out_dir(text: str | None, option: str = "--out") -> Path | None:
    """`text` as a path; one line for an empty one (None stays None: the verb's default)."""
    if text is None:
        return None
    if not text.strip():
        raise LaggrowError(f"{option}: expected a directory path, got an empty string (write {option} . for the "
                           "working directory)")
    return Path(text)
