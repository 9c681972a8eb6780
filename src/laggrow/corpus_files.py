"""A user's corpus file read as a stream of documents, never whole.

The formats: a UTF-8 text file (documents are blank-line-separated paragraphs), a folder of .txt
files (one document per file, in sorted path order), a .jsonl or .jsonl.gz file (one document per
line's text field) and a parquet file (one document per row of its text column; needs pyarrow).
`iter_documents` yields the documents as they are in the file, untrimmed; `data.load_documents`
(the in-memory path) and `laggrow tokenize` (the streaming path) both read through it, so the two
see the very same documents. Bad input is one line naming the file and where: the byte offset of
a byte that is not UTF-8, the line of a malformed or field-less JSON line.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from laggrow.errors import LaggrowError

# How much of a text file is read at a time.
_BLOCK = 1 << 20
_PARAGRAPH = b"\n\n"


def read_text(path: Path) -> str:
    """A whole UTF-8 file, or one line naming the file and the first byte that is not UTF-8."""
    return _decode(Path(path).read_bytes(), path, 0)


def _decode(data: bytes, path: Path, offset: int, where: str = "") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        at = offset + err.start
        raise LaggrowError(f"corpus {path}: not UTF-8 text (invalid byte at offset {at}{where})") from None


def kind_of(path: Path) -> str:
    """'folder', 'jsonl', 'jsonl.gz', 'parquet' or 'text'; one line for a path that names nothing."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise LaggrowError(f"corpus {path}: no such file or folder (expected 'kjv', 'shakespeare', a .txt, .jsonl, "
                           ".jsonl.gz or .parquet file, or a folder of .txt files)")
    name = path.name.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def folder_files(path: Path) -> list[Path]:
    files = sorted(Path(path).rglob("*.txt"))
    if not files:
        raise LaggrowError(f"corpus {path}: folder has no .txt files (expected UTF-8 .txt files)")
    return files


def corpus_size(path: Path) -> int:
    """The corpus's size in bytes as stored (a folder: its .txt files together)."""
    path = Path(path)
    if kind_of(path) == "folder":
        return sum(f.stat().st_size for f in folder_files(path))
    return path.stat().st_size


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The documents of the corpus at `path`, in file order, as they are (not stripped)."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "folder":
        for file in folder_files(path):
            yield read_text(file)
    elif kind == "text":
        yield from _paragraphs(path)
    elif kind == "parquet":
        yield from _parquet_texts(path, text_field)
    else:
        opener = gzip.open if kind == "jsonl.gz" else open
        where = " of its decompressed text" if kind == "jsonl.gz" else ""
        try:
            with opener(path, "rb") as fh:
                yield from _jsonl_texts(fh, path, text_field, where)
        except (gzip.BadGzipFile, EOFError) as err:
            raise LaggrowError(f"corpus {path}: not a readable gzip file ({err}); expected gzip-compressed "
                               "JSON lines") from None


def _paragraphs(path: Path) -> Iterator[str]:
    """The file split at every blank line ("\\n\\n"), as `text.split("\\n\\n")` would, read a block at a
    time: the separator's bytes occur in UTF-8 only as themselves, so splitting bytes first is the same."""
    pending, offset = b"", 0  # offset: where `pending` starts in the file
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            pieces = (pending + block).split(_PARAGRAPH)
            for piece in pieces[:-1]:
                yield _decode(piece, path, offset)
                offset += len(piece) + len(_PARAGRAPH)
            pending = pieces[-1]
    yield _decode(pending, path, offset)


def _jsonl_texts(fh, path: Path, field: str, where: str) -> Iterator[str]:
    offset = 0
    for number, raw in enumerate(fh, start=1):
        line = _decode(raw, path, offset, where)
        offset += len(raw)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise LaggrowError(f"corpus {path} line {number}: expected a JSON object, got malformed JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise LaggrowError(f"corpus {path} line {number}: expected an object with a string field '{field}' "
                               "(--text-field / data.text_field)")
        yield record[field]


def _parquet_texts(path: Path, column: str) -> Iterator[str]:
    if importlib.util.find_spec("pyarrow") is None:
        raise LaggrowError(f"corpus {path}: reading parquet needs pyarrow, which is not installed "
                           "(pip install 'laggrow[parquet]' or pip install pyarrow)")
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
        raise LaggrowError(f"corpus {path}: not a readable parquet file ({str(err)[:120]})") from None
    if column not in table.schema_arrow.names:
        raise LaggrowError(f"corpus {path}: has no column '{column}' (expected a string column of the documents; "
                           f"its columns: {', '.join(table.schema_arrow.names[:8])}; --text-field / data.text_field)")
    row = 0
    for batch in table.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                raise LaggrowError(f"corpus {path} row {row}: column '{column}' holds {type(value).__name__}, "
                                   "expected a string")
            yield value
