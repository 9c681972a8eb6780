"""`laggrow tokenize` and token directories: the same batches as the in-memory path (bytes and a
BPE), a SIGKILL mid-way then a rerun gives the same files, training from a token file larger than
the process may allocate, a short CLI run paused and resumed, and one line for every bad input."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CONFIGS, REPO, finish, invoke_ok, start_laggrow, train_records
from laggrow import store
from laggrow.cli import app
from laggrow.config import DataConfig
from laggrow.data import BPETokenizer, data_fingerprint, load_dataset
from laggrow.errors import LaggrowError
from laggrow.jobs.tokenizing import tokenize_corpus

runner = CliRunner()
WORDS = "the lord said unto moses and aaron café naïve — light darkness, waters; 42 1611".split()


def _documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """A .txt corpus, the same documents as .jsonl and .jsonl.gz, and a BPE tokenizer.json."""
    root = tmp_path_factory.mktemp("tokenize")
    docs = _documents(240)
    (root / "c.txt").write_text("\n\n".join(docs), encoding="utf-8")
    lines = "".join(json.dumps({"body": d}) + "\n" for d in docs)
    (root / "c.jsonl").write_text(lines, encoding="utf-8")
    (root / "c.jsonl.gz").write_bytes(gzip.compress(lines.encode("utf-8"), mtime=0))
    BPETokenizer.train(docs, 300).save(root / "tokenizer.json")
    return {"root": root, "txt": root / "c.txt", "jsonl": root / "c.jsonl", "gz": root / "c.jsonl.gz",
            "bpe": root / "tokenizer.json"}


@pytest.mark.parametrize("corpus, kind, workers", [("txt", "byte", 1), ("gz", "bpe", 2)])
def test_a_token_dir_gives_the_in_memory_batches(corpora, tmp_path, corpus, kind, workers):
    spec = "byte" if kind == "byte" else str(corpora["bpe"])
    out = tmp_path / "tokens"
    tokenize_corpus(str(corpora[corpus]), spec, out, text_field="body", heldout_fraction=0.05, chunk_docs=30,
                    workers=workers)
    common = {"text_field": "body", "heldout_fraction": 0.05, "tokenizer": kind, "seq_len": 16}
    # in memory: the .jsonl (not .gz) read whole, so the reader of the token dir's corpus is not the only one
    source = corpora["txt"] if corpus == "txt" else corpora["jsonl"]
    memory = load_dataset(DataConfig(corpus=str(source), **common),
                          tokenizer=None if kind == "byte" else BPETokenizer.load(corpora["bpe"]))
    mapped = load_dataset(DataConfig(corpus=str(out), **common))
    assert isinstance(mapped.train, np.memmap) and mapped.train.dtype == np.uint16
    for position in range(5):
        batch = mapped.train_batch(position, 4, seed=3)
        assert batch.dtype == np.int32
        np.testing.assert_array_equal(batch, memory.train_batch(position, 4, seed=3))
    for windows in ("eval_batches", "selection_batches", "test_batches"):
        np.testing.assert_array_equal(getattr(mapped, windows)(2, 3), getattr(memory, windows)(2, 3))
    np.testing.assert_array_equal(mapped.train, memory.train)
    np.testing.assert_array_equal(mapped.heldout, memory.heldout)
    assert mapped.split == memory.split
    recorded, computed = (data_fingerprint(d, DataConfig(corpus="x", **common)) for d in (mapped, memory))
    assert recorded == computed
    assert mapped.unigram_entropy() == pytest.approx(memory.unigram_entropy(), rel=1e-12)


def test_an_imported_models_tokenizer_gives_the_in_memory_batches(corpora, tmp_path):
    """SPEC an imported Hugging Face model's run: its own tokenizer, documents separated by its EOS."""
    from laggrow import run_dir

    run = tmp_path / "imported"
    invoke_ok("import", REPO / "tests" / "fixtures" / "hf" / "llama" / "model", "--out", run,
              "--set", f"data.corpus={corpora['jsonl']}", "--set", "data.text_field=body")
    out = tmp_path / "tokens"
    tokenize_corpus(str(corpora["jsonl"]), str(run), out, text_field="body", heldout_fraction=0.05, chunk_docs=30,
                    workers=2)
    common = {"text_field": "body", "heldout_fraction": 0.05, "tokenizer": "hf", "seq_len": 16}
    tokenizer = run_dir.load_tokenizer(run)  # what a run of the imported model reads its data with
    memory = load_dataset(DataConfig(corpus=str(corpora["jsonl"]), **common), tokenizer=tokenizer)
    mapped = load_dataset(DataConfig(corpus=str(out), **common), tokenizer=tokenizer)
    assert json.loads((out / "tokens.json").read_text())["tokenizer"]["separator"] == "eos"
    np.testing.assert_array_equal(mapped.train, memory.train)
    np.testing.assert_array_equal(mapped.heldout, memory.heldout)
    for position in range(3):
        np.testing.assert_array_equal(mapped.train_batch(position, 4, seed=1), memory.train_batch(position, 4, seed=1))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != store.LOCK_FILE}


def test_sigkill_after_a_chunk_then_a_rerun_gives_the_uninterrupted_files(corpora, tmp_path):
    args = [corpora["txt"], "--tokenizer", corpora["bpe"], "--chunk-docs", "40", "--workers", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    invoke_ok("tokenize", *args, "--out", whole)
    proc = start_laggrow("tokenize", *args, "--out", killed, fault="chunk:2=SIGKILL")
    finish(proc)
    assert proc.returncode == -9
    assert (killed / store.TOKENIZE_PROGRESS_FILE).is_file() and not (killed / store.TOKENS_MANIFEST_FILE).exists()
    committed = json.loads((killed / store.TOKENIZE_PROGRESS_FILE).read_text())["documents"]
    assert committed == 80
    # the token dir of an unfinished run is no corpus yet
    with pytest.raises(LaggrowError, match="unfinished, no tokens.json"):
        load_dataset(DataConfig(corpus=str(killed), tokenizer="bpe"))
    invoke_ok("tokenize", *args, "--out", killed)
    assert _files(killed) == _files(whole)
    again = invoke_ok("tokenize", *args, "--out", killed)  # finished: nothing to do
    assert "nothing to do" in again.output and _files(killed) == _files(whole)


TRAIN_SETS = ["--set", "train.steps=4", "--set", "train.warmup_steps=1", "--set", "train.eval_every=2",
              "--set", "train.checkpoint_every=2", "--set", "data.seq_len=16", "--set", "data.heldout_fraction=0.05"]


def test_training_from_a_token_dir_matches_the_corpus_and_resumes_exactly(corpora, tmp_path):
    tokens = tmp_path / "tokens"
    invoke_ok("tokenize", corpora["txt"], "--tokenizer", "byte", "--out", tokens, "--heldout-fraction", "0.05")
    tiny = CONFIGS / "tiny.yaml"
    invoke_ok("train", tiny, "--out", tmp_path / "text", "--set", f"data.corpus={corpora['txt']}", *TRAIN_SETS)
    paused = tmp_path / "paused"
    sets = ["--set", f"data.corpus={tokens}", *TRAIN_SETS]
    invoke_ok("train", tiny, "--out", paused, *sets, "--until", "2")
    invoke_ok("train", tiny, "--out", paused, *sets, "--resume")
    assert train_records(paused) == train_records(tmp_path / "text")
    fingerprint = json.loads((paused / store.DATA_FILE).read_text())
    expected = json.loads((tmp_path / "text" / store.DATA_FILE).read_text())
    assert {k: v for k, v in fingerprint.items() if k != "corpus"} == \
        {k: v for k, v in expected.items() if k != "corpus"}


LIMIT = 1 << 30  # what the training process may allocate (RLIMIT_DATA)
LIMITED = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))
if sys.argv[1] == "--load-whole":  # the control: reading the file whole does not fit
    import numpy as np
    try:
        np.fromfile(sys.argv[2], dtype=np.uint16)
    except MemoryError:
        sys.exit(3)
    sys.exit(0)
sys.argv = ["laggrow", *sys.argv[1:]]
runpy.run_module("laggrow", run_name="__main__")
"""


def test_training_from_a_token_file_larger_than_the_memory_limit(corpora, tmp_path):
    tokens = tmp_path / "tokens"
    tokenize_corpus(str(corpora["txt"]), "byte", tokens, chunk_docs=1000)
    # Grow the train file to 1.5 GiB of token 0 (sparse: no disk written) and its manifest and
    # counts with it. The fingerprint is left as tokenize wrote it: nothing here compares it.
    train_file = tokens / store.TOKEN_FILES["train"]
    size = 3 * LIMIT // 2
    os.truncate(train_file, size)
    manifest = json.loads((tokens / store.TOKENS_MANIFEST_FILE).read_text())
    added = size // 2 - manifest["splits"]["train"]["tokens"]
    manifest["splits"]["train"]["tokens"] = size // 2
    (tokens / store.TOKENS_MANIFEST_FILE).write_text(json.dumps(manifest))
    counts = np.load(tokens / store.TRAIN_COUNTS_FILE)
    counts[0] += added
    np.save(tokens / store.TRAIN_COUNTS_FILE, counts)
    script = tmp_path / "limited.py"
    script.write_text(LIMITED.format(limit=LIMIT))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    control = subprocess.run([sys.executable, script, "--load-whole", train_file], env=env, capture_output=True)
    assert control.returncode == 3, "the limit must stop the file being read whole"
    run = subprocess.run([sys.executable, script, "train", CONFIGS / "tiny.yaml", "--out", tmp_path / "run",
                          "--set", f"data.corpus={tokens}", "--set", "train.steps=2", "--set", "train.warmup_steps=1",
                          "--set", "train.eval_every=2"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / store.SUMMARY_FILE).read_text())
    assert summary["complete"] is True and np.isfinite(summary["final_eval_loss"])


# ---- bad input: one line, exit code 2, nothing half-written ----------------------------------


def _refused(args: list, expected: str, out: Path | None = None, before: dict | None = None) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    if out is not None:
        assert (_files(out) if out.is_dir() else None) == before, "nothing half-written"


def _bad_corpus(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


FIELD = "expected an object with a string field"
BAD_CORPORA = [
    ("c.txt", ("ok text\n\n" * 100).encode() + b"caf\xe9\n\nmore", [],
     "c.txt: not UTF-8 text (invalid byte at offset 903)"),
    ("c.jsonl", b'{"text": "a"}\n{"body": "b"}\n', [], f"c.jsonl line 2: {FIELD} 'text'"),
    ("c.jsonl", b'{"body": "a"}\n{"body": "b"}\n', ["--text-field", "title"], f"line 1: {FIELD} 'title'"),
    ("c.jsonl", b'{"text": "a"}\n\n{"text": "b"\n', [], "c.jsonl line 3: expected a JSON object, got malformed JSON"),
    ("c.jsonl.gz", gzip.compress(b'{"text": "a"}\n{"text": "\xff"}\n', mtime=0), [],
     "not UTF-8 text (invalid byte at offset 24 of its decompressed"),
]


@pytest.mark.parametrize("name, content, option, expected", BAD_CORPORA,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_CORPORA)])
def test_a_bad_corpus_is_one_line(tmp_path, name, content, option, expected):
    corpus = _bad_corpus(tmp_path, name, content)
    out = tmp_path / "tokens"
    _refused(["tokenize", corpus, "--tokenizer", "byte", "--out", out, *option], expected, out)


def test_parquet_needs_pyarrow_and_its_column(tmp_path, corpora):
    out = tmp_path / "tokens"
    if importlib.util.find_spec("pyarrow") is None:
        corpus = _bad_corpus(tmp_path, "c.parquet", b"PAR1 not really")
        _refused(["tokenize", corpus, "--tokenizer", "byte", "--out", out], "reading parquet needs pyarrow", out)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": _documents(80)}), corpus)
    _refused(["tokenize", corpus, "--tokenizer", "byte", "--out", out], "has no column 'text'", out)
    invoke_ok("tokenize", corpus, "--tokenizer", "byte", "--out", out, "--text-field", "body")


def test_bad_tokenizer_specs_and_outs_are_one_line(corpora, tmp_path):
    txt = corpora["txt"]
    _refused(["tokenize", txt, "--tokenizer", tmp_path / "nothing", "--out", tmp_path / "a"], "names nothing",
             tmp_path / "a")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _refused(["tokenize", txt, "--tokenizer", "byte", "--out", busy], "is not a token directory of this corpus",
             busy, _files(busy))
    made = tmp_path / "made"
    invoke_ok("tokenize", txt, "--tokenizer", "byte", "--out", made)
    _refused(["tokenize", corpora["jsonl"], "--tokenizer", "byte", "--text-field", "body", "--out", made],
             "holds the tokens of another corpus", made, _files(made))
    _refused(["tokenize", txt, "--tokenizer", corpora["bpe"], "--out", made], "holds the tokens of another corpus",
             made, _files(made))


@pytest.fixture
def made(corpora, tmp_path) -> Path:
    out = tmp_path / "made"
    tokenize_corpus(str(corpora["txt"]), "byte", out)
    return out


def _train_refused(tmp_path: Path, tokens: Path, expected: str, *sets: str) -> None:
    out = tmp_path / "run"
    _refused(["train", CONFIGS / "tiny.yaml", "--out", out, "--set", f"data.corpus={tokens}",
              "--set", "data.seq_len=16", *sets], expected, out)


def test_a_truncated_token_file_is_one_line(made, tmp_path):
    file = made / store.TOKEN_FILES["heldout"]
    os.truncate(file, file.stat().st_size - 1)
    _train_refused(tmp_path, made, "heldout.tokens holds")


def test_a_damaged_manifest_is_one_line(made, tmp_path):
    manifest = json.loads((made / store.TOKENS_MANIFEST_FILE).read_text())
    del manifest["splits"]["test"]
    (made / store.TOKENS_MANIFEST_FILE).write_text(json.dumps(manifest))
    _train_refused(tmp_path, made, "lacks or mangles its keys")
    (made / store.TOKENS_MANIFEST_FILE).write_text("{not json")
    _train_refused(tmp_path, made, str(made / store.TOKENS_MANIFEST_FILE))


def test_a_disagreeing_size_in_the_manifest_is_one_line(made, tmp_path):
    manifest = json.loads((made / store.TOKENS_MANIFEST_FILE).read_text())
    manifest["splits"]["train"]["tokens"] += 7
    (made / store.TOKENS_MANIFEST_FILE).write_text(json.dumps(manifest))
    _train_refused(tmp_path, made, "train.tokens holds")


def test_another_tokenizer_or_split_than_the_runs_is_one_line(made, corpora, tmp_path):
    _train_refused(tmp_path, made, "tokenized with a 'byte' tokenizer", "--set", "data.tokenizer=bpe")
    _train_refused(tmp_path, made, "data.split_seed: ", "--set", "data.split_seed=1")
    # a BPE token dir read with another BPE (a run's own, as eval and resumes pass it)
    bpe = tmp_path / "bpe"
    tokenize_corpus(str(corpora["txt"]), str(corpora["bpe"]), bpe)
    other = BPETokenizer.train(_documents(50, seed=1), 280)
    with pytest.raises(LaggrowError, match="tokenized with another tokenizer than the run's"):
        load_dataset(DataConfig(corpus=str(bpe), tokenizer="bpe"), tokenizer=other)
    assert load_dataset(DataConfig(corpus=str(bpe), tokenizer="bpe"),
                        tokenizer=BPETokenizer.load(corpora["bpe"])).vocab_size == 300
