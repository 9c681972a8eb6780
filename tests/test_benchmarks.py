"""The benchmarks' pure helpers: the device peak table, the PyTorch peer (when torch is there), and
bench_scale.py's table on two forced CPU devices."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import TEST_XLA_FLAGS

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package: scripts import each other
    by name, as they do when run from there)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peaks = _load("peaks")


@pytest.mark.parametrize("kind, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989),
    ("NVIDIA H100 80GB HBM3", "float32", 494),
    ("NVIDIA H100 PCIe", "bfloat16", 756),
    ("NVIDIA H200", "bfloat16", 989),
    ("NVIDIA H200", "float32", 494),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312),
    ("NVIDIA A100-SXM4-40GB", "float32", 156),
    ("NVIDIA A100 80GB PCIe", "bfloat16", 312),
    ("TPU v4", "bfloat16", 275),
    ("TPU v5 lite", "bfloat16", 197),
    ("TPU v5e", "bfloat16", 197),
    ("tpu  V4", "bfloat16", 275),  # case and spacing do not matter
])
def test_known_devices_have_their_dense_peak(kind, dtype, tflops):
    assert peaks.peak_flops(kind, dtype) == tflops * 1e12
    assert f"{tflops:,} TFLOP/s" in peaks.describe(kind, dtype)


@pytest.mark.parametrize("kind, dtype", [
    ("cpu", "float32"), ("cpu", "bfloat16"),
    ("TPU v4", "float32"),  # float32 on a TPU: several bfloat16 passes, no one figure
    ("TPU v5", "bfloat16"),  # v5p is not v5e
    ("NVIDIA GeForce RTX 4090", "bfloat16"), ("", "bfloat16"),
])
def test_anything_else_is_unknown(kind, dtype):
    assert peaks.peak_flops(kind, dtype) is None
    assert peaks.describe(kind, dtype).startswith("unknown")


# ---- the PyTorch peer (benchmarks/peer_torch.py); CI installs no torch ------------------------------


@pytest.mark.parametrize("overrides", [[], ["model.pos_emb=rope", "model.tie_embeddings=true"]],
                         ids=["learned-untied", "rope-tied"])
def test_the_peer_is_laggrow_s_model_and_optimizer_step_for_step(overrides):
    """Same parameter count, and from laggrow's initial params the same train losses step for step:
    the same architecture, schedule, AdamW, decay mask and clipping, not just the same shapes."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[bench]')")
    import jax
    import numpy as np
    import torch

    from laggrow import model, train
    from laggrow.config import load_run_config

    peer_torch = _load("peer_torch")
    cfg = load_run_config(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml", overrides)
    m, t = cfg.model, cfg.train
    batch = np.random.default_rng(0).integers(0, m.vocab_size, (t.batch_size, cfg.data.seq_len + 1), dtype=np.int32)
    params = model.init_params(m, jax.random.key(0))
    peer, peer_step = peer_torch.make_peer_step(cfg)
    assert peer_torch.n_params(peer) == m.n_params()
    peer_torch.load_laggrow_params(peer, params, m)
    state = train.init_state(params, train.make_optimizer(t))
    step = train.jit_train_step(m, t)
    ours, theirs = [], []
    for _ in range(3):
        state, metrics = step(state, batch)
        ours.append(float(metrics["loss"]))
        theirs.append(peer_step(torch.from_numpy(batch.astype(np.int64))).item())
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    assert ours[-1] < ours[0]  # it trains


def test_the_peer_says_in_one_line_how_to_install_torch_when_it_is_missing():
    import subprocess

    script = str(BENCHMARKS / "peer_torch.py")
    hide_torch = ("import runpy, sys; sys.modules['torch'] = None; "  # `import torch` raises ImportError
                  f"sys.argv = ['peer_torch.py', 'configs/tiny.yaml']; runpy.run_path({script!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", hide_torch], capture_output=True, text=True,
                         cwd=BENCHMARKS.parent, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ["benchmarks/peer_torch.py needs PyTorch: pip install -e '.[bench]' "
                                               "(or pip install 'torch>=2.1')"]


# ---- device scaling (benchmarks/bench_scale.py) -----------------------------------------------------


def test_bench_scale_reports_a_run_and_a_pool_on_each_device_count():
    """Two forced CPU devices (the flag must be set before jax starts: a subprocess): a row for 1
    and 2 devices of both the run (data axis) and the pool (candidate axis), the same first loss."""
    import os
    import re
    import subprocess

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {TEST_XLA_FLAGS}")
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_scale.py"), "configs/tiny.yaml", "--devices", "1",
                          "2", "--steps", "2", "--rounds", "1", "--candidates", "2"],
                         capture_output=True, text=True, cwd=BENCHMARKS.parent, env=env, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "2 x cpu" in out.stdout and "share the same host cores" in out.stdout
    rows = {}
    for line in out.stdout.splitlines():
        row = re.match(r"(run|pool)\s+(\d)\s+(\dx\d)\s+([\d.]+) ms.*\s(\S+)x\s.*\s(\S+)$", line)
        if row:
            rows[row[1], int(row[2])] = (row[3], float(row[4]), float(row[5]), float(row[6]))
    assert set(rows) == {("run", 1), ("run", 2), ("pool", 1), ("pool", 2)}, out.stdout
    assert rows["run", 2][0] == "1x2" and rows["pool", 2][0] == "2x1"
    assert rows["run", 1][2] == rows["pool", 1][2] == 1.0  # the 1-device row is the baseline
    for _layout, step_ms, speedup, loss_diff in rows.values():
        assert step_ms > 0 and speedup > 0
        assert loss_diff < 1e-4, out.stdout  # the same first step on either layout, up to rounding
