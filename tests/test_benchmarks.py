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
