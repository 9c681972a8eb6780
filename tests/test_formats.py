"""format_version and the one migration (formats.migrate): a record an older laggrow wrote reads
back as today's, with the fingerprint it had; today's round-trips; a newer one is refused."""

from __future__ import annotations

import json

import pytest

from laggrow import formats, run_dir, store
from laggrow.config import run_config_from_dict
from laggrow.errors import LaggrowError
from laggrow.pool import records

# config.json as a laggrow before format_version (and before the keys added later) wrote it, by hand
OLD_CONFIG = {
    "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64, "vocab_size": 256, "max_seq_len": 32,
              "pos_emb": "learned", "tie_embeddings": False, "dtype": "float32", "ln_eps": 1e-05},
    "data": {"corpus": "kjv", "text_field": "text", "tokenizer": "byte", "bpe_vocab_size": 1024, "seq_len": 32,
             "heldout_fraction": 0.02, "eval_batches": 4, "eval_batch_size": 16, "split_seed": 0},
    "train": {"steps": 10, "batch_size": 4, "lr": 0.001, "schedule": "cosine", "warmup_steps": 10, "hold_steps": 0,
              "min_lr_ratio": 0.1, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
              "dropout": 0.0, "seed": 0, "eval_every": 50, "log_every": 10, "checkpoint_every": 0},
}


def _run_dir(tmp_path, record):
    (tmp_path / store.CONFIG_FILE).write_text(json.dumps(record))
    return tmp_path


def test_an_old_config_is_migrated_and_keeps_its_fingerprint(tmp_path):
    cfg = run_dir.read_run_config(_run_dir(tmp_path, OLD_CONFIG))
    assert (cfg.model.arch, cfg.model.attention, cfg.train.warmup_start) == ("gpt", "auto", 0.0)  # today's defaults
    # what its checkpoints' fingerprint and a resume compare: the very dict the old file holds
    assert cfg.to_dict() == OLD_CONFIG and store.fingerprint(cfg.to_dict()) == store.fingerprint(OLD_CONFIG)


def test_the_current_config_round_trips_with_its_version(tmp_path):
    cfg = run_dir.read_run_config(_run_dir(tmp_path, OLD_CONFIG))
    record = formats.with_version(cfg.to_dict())
    assert record == {**OLD_CONFIG, formats.KEY: formats.FORMAT_VERSION}  # beside the dict, not in it
    assert run_dir.read_run_config(_run_dir(tmp_path, json.loads(store.dumps(record)))) == cfg
    # `laggrow train RUN/config.json --resume` reads the file as a config too
    assert run_config_from_dict(json.loads(store.dumps(record)), check_fits=False) == cfg


@pytest.mark.parametrize("version, message", [
    (formats.FORMAT_VERSION + 1, f"format_version {formats.FORMAT_VERSION + 1} is newer than this laggrow's"),
    ("1", "format_version must be a non-negative integer, got '1'"),
    (True, "format_version must be a non-negative integer"),
])
def test_a_newer_or_damaged_version_is_one_line(tmp_path, version, message):
    with pytest.raises(LaggrowError, match=message):
        run_dir.read_run_config(_run_dir(tmp_path, {**OLD_CONFIG, formats.KEY: version}))


def test_a_pool_record_of_either_version_reads_back(tmp_path):
    old = {"pool": {"strategies": []}, "source": "/runs/base", "pool_file": None,
           "candidates": [{"candidate": 0, "strategy": "stack", "seed": 0, "name": "stack", "options": {},
                           "lr_scale": 1.0, "function_preserving": True}]}
    (tmp_path / store.POOL_FILE).write_text(json.dumps(old))
    assert records.read_pool_record(tmp_path) == old
    store.write_json(tmp_path / store.POOL_FILE, formats.with_version(old))
    assert records.read_pool_record(tmp_path) == old
    store.write_json(tmp_path / store.POOL_FILE, {**old, formats.KEY: 99})
    with pytest.raises(LaggrowError, match="format_version 99 is newer"):
        records.read_pool_record(tmp_path)


def test_a_stacking_record_of_format_2_is_todays_and_format_1_is_refused(tmp_path):
    path = tmp_path / store.STACK_FILE
    assert formats.migrate({"format": 2, "runs": []}, path, "stacking record", formats.STACK) == {"runs": []}
    assert formats.migrate({formats.KEY: 1, "runs": []}, path, "stacking record", formats.STACK) == {"runs": []}
    for old in ({"format": 1, "runs": []}, {"runs": []}):
        with pytest.raises(LaggrowError, match=r"written by another version of laggrow stack \(record format 1, "
                                               r"expected 2: losses on a test set apart"):
            formats.migrate(old, path, "stacking record", formats.STACK)
