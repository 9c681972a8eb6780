"""A token directory (`laggrow tokenize`'s output) read back: its manifest checked, its token files
opened with `np.memmap`, never loaded whole.

The directory holds one token file per split (train, heldout, and heldout's two halves selection
and test: `store.TOKEN_FILES`), raw little-endian `uint16` (a vocabulary of at most 65536) or
`uint32`; the train split's token counts (`store.TRAIN_COUNTS_FILE`, for the unigram baseline);
the tokenizer's files (none for bytes); and the manifest (`store.TOKENS_MANIFEST_FILE`), written
last, so a directory with a manifest is whole. Opening costs milliseconds: the manifest is read,
every file's size is checked against its token count, nothing is hashed (the data fingerprint is
the manifest's, computed once by `laggrow tokenize`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from laggrow import store
from laggrow.errors import LaggrowError

FORMAT = "laggrow-tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "heldout", "selection", "test")
TOKENIZER_KINDS = ("byte", "bpe", "hf")


def dtype_for(vocab_size: int) -> str:
    """The narrowest unsigned dtype that holds every token id."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_token_dir(corpus: str | Path) -> bool:
    """Whether `corpus` names a token directory, finished (a manifest) or not (a progress file)."""
    path = Path(corpus).expanduser()
    return (path / store.TOKENS_MANIFEST_FILE).is_file() or (path / store.TOKENIZE_PROGRESS_FILE).is_file()


def _damaged(path: Path, what: str) -> LaggrowError:
    return LaggrowError(f"token directory {path}: {what} (expected the output of laggrow tokenize; is it "
                        "damaged? make it again)")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the token directory `path`, its shape checked; one line when it is not one."""
    path = Path(path)
    if not (path / store.TOKENS_MANIFEST_FILE).is_file():
        raise LaggrowError(f"token directory {path}: unfinished, no {store.TOKENS_MANIFEST_FILE} (laggrow tokenize "
                           "was stopped; expected a finished one: run the same laggrow tokenize again to finish it)")
    manifest = store.read_json(path / store.TOKENS_MANIFEST_FILE, "token directory manifest")
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise _damaged(path, f"{store.TOKENS_MANIFEST_FILE} is not format {FORMAT} version {FORMAT_VERSION}")
    try:
        tokenizer, splits = manifest["tokenizer"], manifest["splits"]
        ok = (tokenizer["kind"] in TOKENIZER_KINDS and isinstance(tokenizer["sha256"], str)
              and isinstance(tokenizer["vocab_size"], int) and manifest["dtype"] == dtype_for(tokenizer["vocab_size"])
              and all(isinstance(splits[s]["tokens"], int) and splits[s]["tokens"] >= 0
                      and isinstance(splits[s]["documents"], int) for s in SPLITS)
              and isinstance(manifest["fingerprint"], dict) and isinstance(manifest["split"], dict)
              and isinstance(manifest["split"]["heldout_fraction"], float)
              and isinstance(manifest["split"]["split_seed"], int))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise _damaged(path, f"{store.TOKENS_MANIFEST_FILE} lacks or mangles its keys")
    return manifest


def open_tokens(path: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each split's tokens as a read-only `np.memmap` (an empty split as an empty array), after
    checking that every file holds exactly the manifest's token count."""
    path = Path(path)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    streams = {}
    for split in SPLITS:
        file = path / store.TOKEN_FILES[split]
        count = manifest["splits"][split]["tokens"]
        if not file.is_file():
            raise _damaged(path, f"{file.name} is missing")
        size = file.stat().st_size
        if size != count * dtype.itemsize:
            raise _damaged(path, f"{file.name} holds {size} bytes, the manifest says {count} {dtype.name} tokens "
                                 f"({count * dtype.itemsize} bytes)")
        streams[split] = np.memmap(file, dtype=dtype, mode="r") if count else np.zeros((0,), dtype)
    return streams


def train_counts(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """How often each token id occurs in the train split: (vocab_size,) int64."""
    file = Path(path) / store.TRAIN_COUNTS_FILE
    vocab = manifest["tokenizer"]["vocab_size"]
    try:
        counts = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise _damaged(Path(path), f"{file.name} is not readable ({str(err)[:80]})") from None
    train_tokens = manifest["splits"]["train"]["tokens"]
    if counts.shape != (vocab,) or counts.dtype != np.int64 or int(counts.sum()) != train_tokens:
        raise _damaged(Path(path), f"{file.name} does not hold the train split's counts of {vocab} token ids")
    return counts
