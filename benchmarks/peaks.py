"""Nominal dense peak FLOP/s of an accelerator, by the `device_kind` JAX reports (no libraries).

    peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")  ->  989e12
    peak_flops("cpu", "float32")                     ->  None (unknown)

Vendor datasheet figures for dense matmuls (no 2:4 sparsity). float32 on an NVIDIA GPU is the
TF32 tensor-core rate: XLA's default matmul precision on Ampere and later uses TF32 for float32
operands. TPUs list bfloat16 only (float32 matmuls there are several bfloat16 passes at default
precision, so no one figure fits). Anything not in the table, CPUs included, is unknown: a
benchmark then reports its measured matmul rate alone.
"""

from __future__ import annotations

import re

TERA = 1e12

# (pattern matched against the lower-cased device_kind, {dtype: dense peak FLOP/s}); first match wins,
# so the more specific kinds come first.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    # H100 PCIe: 756 bf16, 378 tf32; H100 NVL: 835 bf16, 418 tf32 (per GPU)
    (r"^nvidia h100 pcie", {"bfloat16": 756 * TERA, "float32": 378 * TERA}),
    (r"^nvidia h100 nvl", {"bfloat16": 835 * TERA, "float32": 418 * TERA}),
    # H100 SXM5 ("NVIDIA H100 80GB HBM3"): 989 bf16, 494 tf32
    (r"^nvidia h100", {"bfloat16": 989 * TERA, "float32": 494 * TERA}),
    (r"^nvidia h200 nvl", {"bfloat16": 835 * TERA, "float32": 418 * TERA}),
    # H200 SXM ("NVIDIA H200"): the H100 SXM's tensor cores with more, faster memory
    (r"^nvidia h200", {"bfloat16": 989 * TERA, "float32": 494 * TERA}),
    # A100, SXM4 and PCIe, 40 and 80 GB ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"): 312 bf16, 156 tf32
    (r"^nvidia a100", {"bfloat16": 312 * TERA, "float32": 156 * TERA}),
    (r"^tpu v4$", {"bfloat16": 275 * TERA}),
    # TPU v5e reports itself as "TPU v5 lite"
    (r"^tpu v5( lite|e)$", {"bfloat16": 197 * TERA}),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device of `device_kind` for matmuls in `dtype` ('float32' or
    'bfloat16'), or None when unknown."""
    kind = " ".join(str(device_kind).lower().split())
    for pattern, peaks in PEAKS:
        if re.search(pattern, kind):
            return peaks.get(dtype)
    return None


def describe(device_kind: str, dtype: str) -> str:
    """'989 TFLOP/s (NVIDIA H100 80GB HBM3, bfloat16 dense)' or 'unknown (cpu, float32)'."""
    peak = peak_flops(device_kind, dtype)
    if peak is None:
        return f"unknown ({device_kind}, {dtype})"
    return f"{peak / TERA:,.0f} TFLOP/s ({device_kind}, {dtype} dense)"
