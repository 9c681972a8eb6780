"""Tokenizer files transformers can load for every kind of laggrow tokenizer (laggrow export).

- `hf`: the imported model's own tokenizer.json and tokenizer_config.json, as the run keeps them.
- `bpe`: laggrow's BPE is a `tokenizers` byte-level BPE already; its tokenizer.json is copied, and
  a tokenizer_config.json naming PreTrainedTokenizerFast is written beside it. It has no special
  tokens (documents were separated by a blank line of text), so the export has no EOS.
- `byte`: a byte-level `tokenizers` model with one token per byte and no merges, whose id of a
  byte is the byte's value: exactly laggrow's ByteTokenizer (tests compare the two on text).
"""

from __future__ import annotations

from typing import Any

from laggrow.config import RunConfig


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable character for every byte, the alphabet of a byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = dict.fromkeys(range(256))
    extra = 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer():
    """laggrow's byte tokenizer as a `tokenizers.Tokenizer`: token id = byte value."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def fast_tokenizer_config(cfg: RunConfig) -> dict[str, Any]:
    """tokenizer_config.json for a tokenizer.json without special tokens (byte, bpe)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.model.max_seq_len,
            "clean_up_tokenization_spaces": False, "add_prefix_space": False}
