"""The benchmarks' pure helpers: the device peak table, and the PyTorch peer (when torch is there)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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
