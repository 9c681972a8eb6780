"""Records do not depend on the device layout: a tiny run on 1, 2, 8 devices (and FSDP), a
checkpoint written on 8 devices with FSDP resumed on 1, a tiny pool over candidate and data axes, and
train-final on another layout than its probe's. The commands run in one subprocess with 8 forced
CPU devices (tests/mesh_layouts.py); the test process itself keeps its one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_XLA_FLAGS
from mesh_layouts import LLAMA_LAYOUTS, PROBE_LAYOUTS, TRAIN_LAYOUTS

HERE = Path(__file__).resolve().parent
# float32 sums in another order (a batch split over devices): rounding, nothing more
TOLERANCE = dict(rtol=2e-5, atol=2e-5)
RUN_KEYS = ("train_loss", "grad_norm", "lr", "eval_loss")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layouts")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
    proc = subprocess.run([sys.executable, str(HERE / "mesh_layouts.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def curves(pool: Path) -> list[dict]:
    rows = [json.loads(line) for line in (pool / "curves.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: (r["step"], r["candidate"]))


def assert_same_records(got: list[dict], want: list[dict], keys: tuple[str, ...], where: str) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want], where
    for g, w in zip(got, want, strict=True):
        for key in keys:
            assert (key in g) == (key in w), f"{where}: step {w['step']}: {key}"
            if key in w and w[key] is not None:
                np.testing.assert_allclose(g[key], w[key], **TOLERANCE, err_msg=f"{where}: step {w['step']} {key}")


@pytest.mark.parametrize("layout", [name for name in TRAIN_LAYOUTS if name != "d1"])
def test_a_run_records_the_same_on_every_layout(layouts, layout):
    reference = metrics(layouts / "train" / "d1")
    assert len(reference) >= 4 and any("eval_loss" in r for r in reference)
    assert_same_records(metrics(layouts / "train" / layout), reference, RUN_KEYS, layout)
    # tokens and flops are counted, not measured: exactly equal
    assert [(r["tokens"], r["flops"]) for r in metrics(layouts / "train" / layout)] == \
           [(r["tokens"], r["flops"]) for r in reference]


@pytest.mark.parametrize("layout", [name for name in LLAMA_LAYOUTS if name != "d1"])
def test_a_llama_run_records_the_same_on_every_layout(layouts, layout):
    """Grouped-query attention's k/v, the SwiGLU and RMSNorm leaves, split by FSDP over 8 devices."""
    reference = metrics(layouts / "llama" / "d1")
    assert json.loads((layouts / "llama" / "d1" / "config.json").read_text())["model"]["arch"] == "llama"
    assert_same_records(metrics(layouts / "llama" / layout), reference, RUN_KEYS, f"llama {layout}")


def test_each_run_says_the_layout_it_trained_on(layouts):
    for name, want in (("d1", (1, 1, False)), ("d2", (1, 2, False)), ("d8-fsdp", (1, 8, True))):
        summary = json.loads((layouts / "train" / name / "summary.json").read_text())
        got = summary["layout"]
        assert (got["candidates"], got["data"], got["fsdp"]) == want, name
        assert got["devices_present"] == 8 and got["processes"] == 1
    # the layout is where, not what: the run's config.json has no mesh section
    assert "mesh" not in json.loads((layouts / "train" / "d8-fsdp" / "config.json").read_text())


def test_a_checkpoint_written_on_8_devices_with_fsdp_resumes_on_1(layouts):
    run = layouts / "train" / "d8-fsdp-then-1"
    assert_same_records(metrics(run), metrics(layouts / "train" / "d1"), RUN_KEYS, "d8-fsdp-then-1")
    assert json.loads((run / "summary.json").read_text())["layout"]["data"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "6"]


@pytest.mark.parametrize("layout", [name for name in PROBE_LAYOUTS if name != "c1d1"])
def test_a_pool_records_the_same_curves_on_every_layout(layouts, layout):
    reference = curves(layouts / "probe" / "c1d1")
    assert len({r["candidate"] for r in reference}) == 3
    got = curves(layouts / "probe" / layout)
    assert [(r["candidate"], r["diverged"]) for r in got] == [(r["candidate"], r["diverged"]) for r in reference]
    assert_same_records(got, reference, ("eval_loss", "train_loss"), layout)


def test_a_pool_in_chunks_over_a_candidate_axis_sizes_them_from_both_devices(layouts):
    chunked = layouts / "probe" / "c2d1-chunked"
    record = json.loads((chunked / "pool.json").read_text())
    assert record["chunking"]["together"] == 2
    assert record["chunking"]["memory_from"].endswith("x 2 devices")
    assert_same_records(curves(chunked), curves(layouts / "probe" / "c1d1"), ("eval_loss", "train_loss"), "chunked")


def test_pool_json_records_the_layout_each_probe_ran_on(layouts):
    def layout(name):
        return json.loads((layouts / "probe" / name / "pool.json").read_text())["layout"]

    assert (layout("c2d2")["candidates"], layout("c2d2")["data"]) == (2, 2)
    assert {k: layout("c4d2-fsdp")[k] for k in ("candidates", "data", "fsdp", "devices", "devices_present")} == \
           {"candidates": 4, "data": 2, "fsdp": True, "devices": 8, "devices_present": 8}
    assert {k: layout("c1d1")[k] for k in ("candidates", "data", "fsdp", "devices", "processes")} == \
           {"candidates": 1, "data": 1, "fsdp": False, "devices": 1, "processes": 1}
    # the mesh asked for is kept with the pool (an execution key: train-final may choose another)
    pool = json.loads((layouts / "probe" / "c2d2" / "pool.json").read_text())["pool"]
    assert pool["mesh"] == {"candidates": 2, "data": 2, "fsdp": False}
    # 3 candidates on a candidate axis of 4: padded, and the padding is not recorded
    assert len(curves(layouts / "probe" / "c4d2-fsdp")) == len(curves(layouts / "probe" / "c1d1"))


def test_train_final_continues_a_probe_on_another_layout(layouts):
    reference = curves(layouts / "final" / "c1")
    assert max(r["step"] for r in reference) == 8
    assert_same_records(curves(layouts / "final" / "c2d2-then-1"), reference, ("eval_loss", "train_loss"),
                        "final c2d2-then-1")
    final = json.loads((layouts / "final" / "c2d2-then-1" / "final.json").read_text())
    assert (final["layout"]["candidates"], final["layout"]["data"]) == (1, 1)
