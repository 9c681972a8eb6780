"""`chunk_size: auto`: the most candidates the device's memory holds, sized by resources.py's estimate.

The sizing is a pure function (memory per candidate and the device's bytes -> a chunk); the
device's memory on CPU is the host's, which LAGGROW_MEMORY bounds, so the tests choose it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import invoke_ok
from laggrow import resources, run_dir, store
from laggrow.cli import app
from laggrow.errors import LaggrowError
from laggrow.pool.spec import pool_config_from_dict
from laggrow.pool.step import chunk_for

POOL = {
    "target": {"n_layers": 3},
    "strategies": ["stack", "zero_top"],
    "seeds": [0, 1],
    "lag_steps": 3,
    "final_steps": 6,
    "eval_points": 3,
    "train": {"lr": 0.003, "warmup_steps": 1},
}


# ---- the pure sizing ------------------------------------------------------------------------------


@pytest.mark.parametrize("per_candidate, fixed, memory, n, expected", [
    (10, 100, 1000, 8, 8),  # budget 500 - 100 = 400 holds 40: all eight
    (100, 100, 1000, 8, 4),  # 400 // 100
    (100, 100, 999, 8, 3),  # int(499.5) - 100 = 399 // 100
    (100, 100, 1000, 4, 4),  # exactly all of them
    (100, 450, 1000, 8, 1),  # 50 left: less than one, still one at a time
    (100, 2000, 1000, 8, 1),  # the pool's states alone exceed the budget: one at a time
    (1, 0, 2**40, 3, 3),
])
def test_the_chunk_is_the_most_candidates_within_half_the_memory(per_candidate, fixed, memory, n, expected):
    assert resources.chunk_that_fits(per_candidate, fixed, memory, n) == expected


def test_the_fraction_of_memory_counted_on_is_a_parameter():
    assert resources.chunk_that_fits(100, 100, 1000, 8, fraction=1.0) == 8
    assert resources.chunk_that_fits(100, 100, 1000, 8, fraction=0.3) == 2


def test_without_laggrow_memory_a_cpu_sizes_from_the_host_s_memory(monkeypatch):
    from laggrow.pool.step import device_memory

    monkeypatch.delenv(resources.MEMORY_ENV, raising=False)
    assert device_memory() == (resources.available_memory(), "cpu host memory")
    monkeypatch.setenv(resources.MEMORY_ENV, "3G")
    assert device_memory() == (3 * 2**30, resources.MEMORY_ENV)


@pytest.mark.parametrize("args", [(0, 1, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0)])
def test_sizes_that_are_not_positive_are_a_programming_error(args):
    with pytest.raises(ValueError, match="expected positive sizes"):
        resources.chunk_that_fits(*args)


def test_the_pool_s_bytes_split_into_its_states_and_each_candidate_of_a_step(tiny_config_path):
    from laggrow.config import load_run_config

    cfg = load_run_config(tiny_config_path)
    fixed, per_candidate = resources.pool_chunk_bytes(cfg, 6)
    assert 0 < fixed and 0 < per_candidate
    for together in range(1, 7):
        assert resources.training_bytes(cfg, 6, together)[0] == fixed + together * per_candidate


# ---- config: auto, integers, and bad values in one line ---------------------------------------------


def test_auto_and_integers_are_chunk_sizes_and_integers_resolve_as_before(tiny_config_path, tmp_path):
    from laggrow.config import load_run_config

    source = load_run_config(tiny_config_path)
    raw = {**POOL, "source": str(tmp_path)}
    assert pool_config_from_dict(raw).chunk_size == "auto"  # the default: what the memory holds
    auto = pool_config_from_dict({**raw, "chunk_size": "auto"})
    assert auto.chunk_size == "auto" and auto.to_dict()["chunk_size"] == "auto"
    target = auto.target_run_config(source)
    assert chunk_for(0, target, 4) == {"chunk_size": 0, "together": 4}
    assert chunk_for(3, target, 4) == {"chunk_size": 3, "together": 3}
    assert chunk_for(9, target, 4) == {"chunk_size": 9, "together": 4}


@pytest.mark.parametrize("value", ["big", -1, 2.5, True, [2], "Auto"])
def test_a_bad_chunk_size_is_one_line_naming_the_key(value, tmp_path):
    with pytest.raises(LaggrowError) as err:
        pool_config_from_dict({**POOL, "source": str(tmp_path), "chunk_size": value})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("pool.chunk_size: expected an integer >= 0 (0: all at once) or 'auto'"), message


def test_a_bad_chunk_size_from_the_command_line_exits_2_with_one_line(tmp_path, tiny_base_run):
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({**POOL, "source": str(tiny_base_run), "chunk_size": "lots"}))
    result = CliRunner().invoke(app, ["probe", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "chunk_size: expected an integer >= 0" in lines[0] and "'lots'" in lines[0]
    assert not (tmp_path / "out").exists()


# ---- auto resolved on this machine and trained ------------------------------------------------------


def _probe(directory, source, **changes):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pool.yaml"
    path.write_text(yaml.safe_dump({**POOL, "source": str(source), **changes}))
    invoke_ok("probe", path, "--out", directory / "out")
    out = directory / "out"
    meta = json.loads((out / store.POOL_FILE).read_text())
    curves = [(r["candidate"], r["step"], r["eval_loss"], r["train_loss"])
              for r in store.read_jsonl(out / store.CURVES_FILE, "records")]
    return meta, curves


def _target(tiny_base_run):
    source = run_dir.read_run_config(tiny_base_run, what="pool source")
    return pool_config_from_dict({**POOL, "source": str(tiny_base_run)}).target_run_config(source)


@pytest.fixture(scope="module")
def whole_pool(tmp_path_factory, tiny_base_run):
    return _probe(tmp_path_factory.mktemp("whole"), tiny_base_run, chunk_size=0)


def test_auto_trains_a_pool_that_fits_all_at_once_with_identical_records(whole_pool, tmp_path, tiny_base_run,
                                                                         monkeypatch):
    monkeypatch.setenv(resources.MEMORY_ENV, "64G")
    meta, curves = _probe(tmp_path, tiny_base_run, chunk_size="auto")
    chunking = meta["chunking"]
    assert chunking["chunk_size"] == "auto" and chunking["together"] == 4
    assert chunking["memory_bytes"] == 64 * 2**30 and chunking["memory_from"] == resources.MEMORY_ENV
    fixed, per_candidate = resources.pool_chunk_bytes(_target(tiny_base_run), 4)
    assert (chunking["pool_state_bytes"], chunking["per_candidate_bytes"]) == (fixed, per_candidate)
    whole_meta, whole_curves = whole_pool
    assert whole_meta["chunking"] == {"chunk_size": 0, "together": 4}
    assert curves == whole_curves  # the very same program: bit for bit


def test_auto_trains_in_chunks_when_the_memory_holds_fewer(whole_pool, tmp_path, tiny_base_run, monkeypatch):
    fixed, per_candidate = resources.pool_chunk_bytes(_target(tiny_base_run), 4)
    # half of it holds the pool's states and two and a half candidates of a step: chunks of two
    memory = int(2 * (fixed + 2.5 * per_candidate))
    monkeypatch.setenv(resources.MEMORY_ENV, str(memory))
    meta, curves = _probe(tmp_path, tiny_base_run, chunk_size="auto")
    assert meta["chunking"]["together"] == 2 and meta["chunking"]["memory_bytes"] == memory
    assert meta["chunking"]["memory_from"] == resources.MEMORY_ENV
    assert meta["pool"]["chunk_size"] == "auto"
    _, whole_curves = whole_pool
    assert [c[:2] for c in curves] == [c[:2] for c in whole_curves]
    # chunks are the same arithmetic per candidate; only XLA's batch of the vmap differs
    def losses(rows):  # step 0 has no train loss (None)
        return np.array([[np.nan if x is None else x for x in c[2:]] for c in rows], dtype=np.float64)

    np.testing.assert_allclose(losses(curves), losses(whole_curves), rtol=0, atol=1e-5)
    invoke_ok("train-final", tmp_path / "out")  # resolved again for the continued candidates
    assert (tmp_path / "out" / store.FINAL_FILE).is_file()


def test_auto_counts_the_memory_of_every_device_of_the_candidate_axis(tiny_config_path, monkeypatch):
    from laggrow.config import load_run_config

    target = load_run_config(tiny_config_path)
    fixed, per_candidate = resources.pool_chunk_bytes(target, 64)
    # memory for the pool's states and exactly 3 candidates a step on one device
    memory = int((fixed + 3 * per_candidate) / resources.AUTO_CHUNK_FRACTION) + 1
    monkeypatch.setenv(resources.MEMORY_ENV, str(memory))
    one = chunk_for("auto", target, 64)
    assert one["together"] == 3
    # four devices on the candidate axis: four times the memory (the states counted once, as above)
    four = chunk_for("auto", target, 64, devices=4)
    assert four["together"] == (4 * memory // 2 - fixed) // per_candidate > 4 * 3 - 1
    assert four["memory_bytes"] == 4 * memory and four["memory_from"] == f"{resources.MEMORY_ENV} x 4 devices"
