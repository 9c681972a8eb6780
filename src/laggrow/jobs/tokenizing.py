"""`laggrow tokenize`: a corpus into a token directory (`token_dir.py`), as a stream, on every core,
resumable when killed.

Two passes over the corpus. The first reads every document once for its length in characters, which
is all the document split needs (`data.heldout_indices`, `data.selection_indices`: the in-memory
path's split, so the same corpus splits the same way; a corpus of fewer than MIN_DOCUMENTS
documents is cut as that path cuts it, in memory). Bad input (a byte that is not UTF-8, a malformed
JSON line, a missing text field) is found there, before anything is written. The second pass
tokenizes chunks of documents in worker processes, in order, each document on its own, and appends
each document's tokens, with the separator `data.encode_documents` puts between documents, to its
split's files. After every chunk the files are fsynced and the progress file records how many
documents and bytes are committed; a rerun cuts the files back to that and goes on from there, so
its output is byte for byte an uninterrupted run's. The fingerprint (sha256 of the train and
held-out streams as int32, as `data.data_fingerprint` hashes them) and the train counts are
computed at the end, reading the files a block at a time, and the manifest is written last.
"""

from __future__ import annotations

import array
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from laggrow import faults, store, token_dir
from laggrow.config import DataConfig
from laggrow.corpus_files import corpus_size, folder_files, iter_documents, kind_of
from laggrow.data import (
    DOC_SEPARATOR,
    MIN_DOCUMENTS,
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    cut_short_corpus,
    document_separator,
    heldout_indices,
    load_documents,
    selection_indices,
    split_record,
    stream_sha256,
    tokenizer_kind,
    tokenizer_sha256,
)
from laggrow.errors import LaggrowError

DEFAULT_CHUNK_DOCS = 2048
BUNDLED = ("kjv", "shakespeare")
TRAIN, SELECTION, TEST = 0, 1, 2  # a document's role

Progress = Callable[[str, int, int | None], None]  # (phase, done, total): "read" documents, "tokenize" documents


# ---------------------------------------------------------------------------------------------
# The tokenizer a spec names


def resolve_tokenizer(spec: str) -> tuple[Any, list[Path]]:
    """The tokenizer `spec` names, and the files that make it (kept in the token directory):
    'byte'; a laggrow run directory (or a pool: its source's), whatever its `data.tokenizer`; or a
    tokenizer.json file (used as laggrow's BPE is: `data.tokenizer: bpe`)."""
    from laggrow import run_dir

    if spec == "byte":
        return ByteTokenizer(), []
    path = Path(spec).expanduser()
    if path.is_dir() and ((path / store.CONFIG_FILE).is_file() or (path / store.POOL_FILE).is_file()):
        tokenizer = run_dir.load_tokenizer(path)
        if (path / store.POOL_FILE).is_file():
            path = Path(store.read_json(path / store.POOL_FILE, "pool record")["source"])
        kind = tokenizer_kind(tokenizer)
        names = {"byte": [], "bpe": [store.TOKENIZER_FILE],
                 "hf": [store.TOKENIZER_FILE, store.TOKENIZER_CONFIG_FILE]}[kind]
        return tokenizer, [path / name for name in names]
    if path.is_file():
        return BPETokenizer.load(path), [path]
    raise LaggrowError(f"--tokenizer {spec}: names nothing (expected 'byte', a laggrow run directory or a "
                       "tokenizer.json file)")


def _load_kept_tokenizer(kind: str, out: Path):
    """The tokenizer kept in the token directory `out` (a worker's copy)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        return HFTokenizer.load(out)
    return BPETokenizer.load(out / store.TOKENIZER_FILE)


# ---------------------------------------------------------------------------------------------
# Workers


_worker: dict[str, Any] = {}


def _start_worker(kind: str, out: str, dtype: str) -> None:
    tokenizer = _load_kept_tokenizer(kind, Path(out))
    _worker.update(tokenizer=tokenizer, dtype=dtype, separator=document_separator(tokenizer))


def _encode_chunk(docs: list[str]) -> list[np.ndarray]:
    """Each document's tokens, in the token files' dtype. For a tokenizer that separates documents
    by text, two joined documents are checked to tokenize as the two apart and the separator
    between them: what makes one document at a time equal to `encode_documents`' whole stream."""
    tokenizer, dtype = _worker["tokenizer"], _worker["dtype"]
    encoded = [tokenizer.encode(doc) for doc in docs]
    kind, sep = _worker["separator"]
    if kind == "text" and len(docs) >= 2 and not isinstance(tokenizer, ByteTokenizer):
        joined = tokenizer.encode(docs[0] + DOC_SEPARATOR + docs[1])
        if not np.array_equal(joined, np.concatenate([encoded[0], sep, encoded[1]])):
            raise LaggrowError("--tokenizer: two documents joined by a blank line tokenize differently from the "
                               "two apart (expected a tokenizer whose tokens never span a blank line)")
    return [ids.astype(dtype) for ids in encoded]


# ---------------------------------------------------------------------------------------------
# The corpus


def _source(corpus: str, text_field: str) -> dict[str, Any]:
    """What identifies the corpus as read: its path, kind, size and modification time."""
    if corpus in BUNDLED:
        return {"path": corpus, "kind": "bundled", "size": None, "mtime_ns": None, "text_field": text_field}
    path = Path(corpus).expanduser().absolute()
    kind = kind_of(path)
    files = folder_files(path) if kind == "folder" else [path]
    return {"path": str(path), "kind": kind, "size": corpus_size(path),
            "mtime_ns": max(f.stat().st_mtime_ns for f in files), "text_field": text_field}


def _documents(cfg: DataConfig) -> Iterator[str]:
    """The corpus's documents, stripped, none empty (not yet cut: see `cut_short_corpus`)."""
    if cfg.corpus in BUNDLED:
        yield from load_documents(cfg)
        return
    for doc in iter_documents(Path(cfg.corpus).expanduser(), cfg.text_field):
        doc = doc.strip()
        if doc:
            yield doc


# ---------------------------------------------------------------------------------------------
# The directory


def _identity(source: dict, tokenizer, cfg: DataConfig) -> dict[str, Any]:
    return {"source": source, "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed}


def _manifest_identity(manifest: dict) -> dict[str, Any]:
    return {"source": manifest.get("source"), "tokenizer_sha256": manifest["tokenizer"]["sha256"],
            "heldout_fraction": manifest["split"]["heldout_fraction"], "split_seed": manifest["split"]["split_seed"]}


def _check_out(out: Path, identity: dict) -> tuple[dict | None, dict | None]:
    """(manifest, progress) of `out` when it is this corpus's token directory, finished or not,
    (None, None) when `out` is new or empty; one line otherwise."""
    if out.exists() and not out.is_dir():
        raise LaggrowError(f"--out {out}: is a file (expected a new directory, or a token directory of this corpus)")
    if not out.is_dir():
        return None, None
    if (out / store.TOKENS_MANIFEST_FILE).is_file():
        manifest = token_dir.read_manifest(out)
        if _manifest_identity(manifest) != identity:
            raise LaggrowError(f"--out {out}: holds the tokens of another corpus, tokenizer or split "
                               f"({manifest.get('source', {}).get('path')}); expected a new directory")
        return manifest, None
    if (out / store.TOKENIZE_PROGRESS_FILE).is_file():
        progress = store.read_json(out / store.TOKENIZE_PROGRESS_FILE, "tokenize progress")
        if progress.get("identity") != identity:
            raise LaggrowError(f"--out {out}: holds an unfinished laggrow tokenize of another corpus, tokenizer or "
                               "split (or the corpus changed since); expected a new directory")
        return None, progress
    if any(p.name != store.LOCK_FILE for p in out.iterdir()):
        raise LaggrowError(f"--out {out}: exists and is not a token directory of this corpus (expected a new or "
                           "empty directory)")
    return None, None


def tokenize_corpus(corpus: str, spec: str, out: Path, *, text_field: str = "text",
                    heldout_fraction: float = DataConfig.heldout_fraction, split_seed: int = 0,
                    chunk_docs: int = DEFAULT_CHUNK_DOCS, workers: int | None = None,
                    on_progress: Progress | None = None) -> tuple[dict[str, Any], bool]:
    """Tokenize `corpus` with the tokenizer `spec` names into the token directory `out`, or
    continue an unfinished one. Returns (manifest, already): `already` when `out` was finished."""
    cfg = DataConfig(corpus=corpus, text_field=text_field, heldout_fraction=heldout_fraction,
                     split_seed=split_seed)
    cfg.validate()
    if chunk_docs < 1:
        raise LaggrowError(f"--chunk-docs: expected at least 1, got {chunk_docs}")
    report = on_progress or (lambda phase, done, total: None)
    out = Path(out).absolute()
    tokenizer, files = resolve_tokenizer(spec)
    source = _source(corpus, text_field)
    identity = _identity(source, tokenizer, cfg)
    manifest, progress = _check_out(out, identity)
    if manifest is not None:
        return manifest, True

    # Pass 1: every document's length (and here every bad byte or line is found).
    lengths = array.array("q")
    for doc in _documents(cfg):
        lengths.append(len(doc))
        if len(lengths) % 4096 == 0:
            report("read", len(lengths), None)
    report("read", len(lengths), len(lengths))
    short = None
    if len(lengths) < MIN_DOCUMENTS:  # cut as the in-memory path cuts it: a small corpus, in memory
        short = cut_short_corpus(list(_documents(cfg)), corpus)
        lengths = array.array("q", (len(d) for d in short))
    n_docs = len(lengths)
    roles = np.full(n_docs, TRAIN, np.int8)
    heldout = heldout_indices(lengths, cfg.heldout_fraction, cfg.split_seed)
    selection, test = selection_indices([lengths[i] for i in heldout], cfg.split_seed)
    roles[[heldout[i] for i in selection]] = SELECTION
    roles[[heldout[i] for i in test]] = TEST

    created = not out.exists()
    store.ensure_dir(out, "--out")
    try:
        with store.DirLock(out, "--out"):
            manifest = _tokenize(cfg, out, tokenizer, files, spec, identity, progress, roles,
                                 short, workers, chunk_docs, report)
    except LaggrowError:
        if progress is None:  # nothing of a fresh attempt is left half-written
            _remove_made(out, created)
        raise
    return manifest, False


def _remove_made(out: Path, created: bool) -> None:
    names = [store.TOKENIZE_PROGRESS_FILE, store.TRAIN_COUNTS_FILE, store.TOKENIZER_FILE,
             store.TOKENIZER_CONFIG_FILE, *store.TOKEN_FILES.values()]
    for name in names:
        (out / name).unlink(missing_ok=True)
    if created:
        shutil.rmtree(out, ignore_errors=True)


def _tokenize(cfg: DataConfig, out: Path, tokenizer, files: list[Path], spec: str, identity: dict,
              progress: dict | None, roles: np.ndarray, short: list[str] | None, workers: int | None,
              chunk_docs: int, report: Progress) -> dict[str, Any]:
    kind = tokenizer_kind(tokenizer)
    dtype = token_dir.dtype_for(tokenizer.vocab_size)
    paths = {split: out / name for split, name in store.TOKEN_FILES.items()}
    if progress is None:
        for file in files:
            store.copy_file(file, out / file.name)
        progress = {"identity": identity, "documents": 0, "bytes": dict.fromkeys(paths, 0),
                    "docs": dict.fromkeys(paths, 0)}
        store.write_json(out / store.TOKENIZE_PROGRESS_FILE, progress)
    for split, file in paths.items():  # what a killed run appended past its last commit goes
        store.truncate_file(file, progress["bytes"][split])
    sep_kind, sep = document_separator(tokenizer)
    sep = sep.astype(dtype)
    itemsize = np.dtype(dtype).itemsize

    done = progress["documents"]
    n_docs = len(roles)
    docs = iter(short) if short is not None else _documents(cfg)
    for _ in range(done):  # committed already
        next(docs)

    def chunks() -> Iterator[list[str]]:
        while batch := [doc for _, doc in zip(range(chunk_docs), docs, strict=False)]:
            yield batch

    def commit(encoded: list[np.ndarray]) -> None:
        nonlocal done
        parts: dict[str, list[bytes]] = {split: [] for split in paths}
        for ids in encoded:
            role = roles[done]
            for split in ("train",) if role == TRAIN else ("heldout", "selection" if role == SELECTION else "test"):
                count = progress["docs"][split]
                pieces = {"eos": [ids, sep], "bos": [sep, ids]}.get(sep_kind) or ([sep, ids] if count else [ids])
                parts[split] += [p.tobytes() for p in pieces]
                progress["docs"][split] = count + 1
            done += 1
        for split, chunk in parts.items():
            if chunk:
                store.append_bytes(paths[split], chunk)
                progress["bytes"][split] += sum(len(c) for c in chunk)
        progress["documents"] = done
        store.write_json(out / store.TOKENIZE_PROGRESS_FILE, progress)
        report("tokenize", done, n_docs)
        faults.point("chunk", -(-done // chunk_docs))

    report("tokenize", done, n_docs)
    workers = workers or len(os.sched_getaffinity(0))
    if workers <= 1 or n_docs - done <= chunk_docs:
        _start_worker(kind, str(out), dtype)
        for chunk in chunks():
            commit(_encode_chunk(chunk))
    else:
        import multiprocessing

        # spawned, not forked: a fork of a process whose threads (JAX's, the tokenizers library's)
        # hold locks can deadlock the child; a worker imports this module and its tokenizer only
        with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (kind, str(out), dtype)) as pool:
            pending: deque = deque()
            for chunk in chunks():  # a few chunks in flight at a time, committed in order
                pending.append(pool.apply_async(_encode_chunk, (chunk,)))
                if len(pending) >= 2 * workers:
                    commit(pending.popleft().get())
            while pending:
                commit(pending.popleft().get())

    streams = {split: np.memmap(paths[split], dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
               if progress["bytes"][split] else np.zeros((0,), dtype) for split in paths}
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    block = 1 << 22
    for i in range(0, len(streams["train"]), block):
        counts += np.bincount(streams["train"][i:i + block], minlength=tokenizer.vocab_size)
    tokens = {split: progress["bytes"][split] // itemsize for split in paths}
    fingerprint = {"vocab_size": int(tokenizer.vocab_size),
                   "train_tokens": tokens["train"], "train_sha256": stream_sha256(streams["train"]).hexdigest(),
                   "heldout_tokens": tokens["heldout"],
                   "heldout_sha256": stream_sha256(streams["heldout"]).hexdigest()}
    store.write_npy(out / store.TRAIN_COUNTS_FILE, counts)
    manifest = {
        "format": token_dir.FORMAT, "version": token_dir.FORMAT_VERSION,
        "tokenizer": {"kind": kind, "spec": spec, "sha256": identity["tokenizer_sha256"],
                      "vocab_size": int(tokenizer.vocab_size), "separator": sep_kind},
        "dtype": dtype,
        "documents": n_docs,
        "splits": {split: {"file": paths[split].name, "documents": progress["docs"][split], "tokens": tokens[split]}
                   for split in paths},
        "split": {"heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed,
                  "record": split_record(progress["docs"]["selection"], progress["docs"]["test"],
                                         tokens["selection"], tokens["test"])},
        "fingerprint": fingerprint,
        "source": identity["source"],
    }
    store.write_json(out / store.TOKENS_MANIFEST_FILE, manifest)
    (out / store.TOKENIZE_PROGRESS_FILE).unlink()
    return manifest
