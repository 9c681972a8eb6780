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


PEER_CASES = pytest.mark.parametrize("config, overrides, gqa", [
    ("tiny.yaml", [], "sdpa"),
    ("tiny.yaml", ["model.pos_emb=rope", "model.tie_embeddings=true"], "sdpa"),
    # llama: grouped-query attention (2 KV heads for 4 query heads) read by SDPA's enable_gqa and by
    # repeat_kv's copy; tied, with q/k/v biases (they train: zero at init, decay-free); multi-head
    ("tiny-llama.yaml", [], "sdpa"),
    ("tiny-llama.yaml", [], "repeat"),
    ("tiny-llama.yaml", ["model.tie_embeddings=true", "model.qkv_bias=true", "model.rope_theta=500"], "sdpa"),
    ("tiny-llama.yaml", ["model.n_kv_heads=4"], "sdpa"),
], ids=["learned-untied", "rope-tied", "llama-grouped", "llama-grouped-repeat-kv", "llama-tied-bias-theta",
        "llama-multi-head"])


@PEER_CASES
def test_the_peer_is_laggrow_s_model_and_optimizer_step_for_step(config, overrides, gqa):
    """Same parameter count, and from laggrow's initial params the same train losses step for step:
    the same architecture, schedule, AdamW, decay mask and clipping, not just the same shapes."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[bench]')")
    import jax
    import numpy as np
    import torch

    from laggrow import model, train
    from laggrow.config import load_run_config

    peer_torch = _load("peer_torch")
    cfg = load_run_config(Path(__file__).resolve().parent.parent / "configs" / config, overrides)
    m, t = cfg.model, cfg.train
    batch = np.random.default_rng(0).integers(0, m.vocab_size, (t.batch_size, cfg.data.seq_len + 1), dtype=np.int32)
    params = model.init_params(m, jax.random.key(0))
    peer, peer_step = peer_torch.make_peer_step(cfg, gqa=gqa)
    assert peer_torch.n_params(peer) == m.n_params()
    decayed = sum(w.size for w, decays in zip(jax.tree.leaves(params), jax.tree.leaves(train.decay_mask(params)),
                                              strict=True) if decays)
    assert sum(p.numel() for name, p in peer.named_parameters() if peer_torch.decays(name, m.arch)) == decayed
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


@PEER_CASES
def test_the_peer_computes_laggrow_s_logits_from_sharp_weights(config, overrides, gqa):
    """The forward pass alone, from laggrow's initial params scaled up 12x (biases set): at the
    init's 0.02 the attention is nearly uniform, so the losses above barely see RoPE's base or which
    key/value head a query head reads; here they move the logits far beyond the tolerance."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[bench]')")
    import jax
    import numpy as np
    import torch

    from laggrow import model
    from laggrow.config import load_run_config

    peer_torch = _load("peer_torch")
    m = load_run_config(Path(__file__).resolve().parent.parent / "configs" / config, overrides).model
    params = jax.tree.map(lambda w: 12 * w, model.init_params(m, jax.random.key(1)))
    attn = params["blocks"]["attn"]
    for i, name in enumerate(n for n in ("b_q", "b_k", "b_v") if n in attn):
        attn[name] = jax.random.normal(jax.random.key(2 + i), attn[name].shape)
    tokens = np.random.default_rng(1).integers(0, m.vocab_size, (2, m.max_seq_len), dtype=np.int32)
    ours = np.asarray(model.apply(params, tokens, m))
    peer = peer_torch.build_peer(m, gqa=gqa)
    peer_torch.load_laggrow_params(peer, params, m)
    with torch.no_grad():
        theirs = peer(torch.from_numpy(tokens.astype(np.int64))).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=2e-4 * np.abs(ours).max())


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


# ---- the two architectures' steps (benchmarks/bench_arch.py) ----------------------------------------


@pytest.mark.parametrize("config", ["small.yaml", "tiny.yaml"])
def test_bench_arch_compares_gpt_with_a_llama_of_the_same_size(config):
    """The llama twin keeps depth, width, heads and vocabulary, swaps learned positions for RoPE,
    and holds within one SwiGLU column of gpt's MLP weights (3 matrices of round(2/3 d_ff))."""
    from laggrow.config import load_run_config

    bench_arch = _load("bench_arch")
    gpt = load_run_config(BENCHMARKS.parent / "configs" / config, []).model
    llama = bench_arch.llama_twin(gpt, n_kv_heads=0)
    assert (llama.arch, llama.pos_emb, llama.kv_heads) == ("llama", "rope", gpt.n_heads)
    assert (llama.n_layers, llama.d_model, llama.n_heads, llama.vocab_size) == (
        gpt.n_layers, gpt.d_model, gpt.n_heads, gpt.vocab_size)
    assert abs(3 * llama.d_ff - 2 * gpt.d_ff) <= 1
    grouped = bench_arch.llama_twin(gpt, n_kv_heads=1)
    assert grouped.kv_heads == 1 and grouped.n_params() < llama.n_params()
