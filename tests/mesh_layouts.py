"""The same tiny run and pool on several device layouts, in one process with 8 forced CPU devices.

Run by tests/test_mesh_layouts.py as `python tests/mesh_layouts.py OUT` with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before jax starts, so
not in the test process). Every command goes through laggrow's own command line, in-process;
the test compares what they wrote. What runs, into OUT/<name>:

    train/<layout>       configs/tiny.yaml, 12 steps, on data = 1, 2 and 8 with FSDP
    train/d8-fsdp-then-1 paused at step 6 on 8 devices with FSDP (its parameters sharded), resumed on 1
    llama/<layout>       configs/tiny-llama.yaml, the same 12 steps, on data = 1 and 8 with FSDP
    probe/<layout>       a 3-candidate pool from train/d1, k = 4, on candidates x data = 1x1,
                         2x2, 4x2 with FSDP (padded to 4): 1, 4, 8 devices
    probe/c2d1-chunked   the same pool on 2 x 1 in chunks of 2, the second padded (chunk_size
                         auto, memory bounded): 2 devices
    final/c2d2-then-1    probe/c2d2's directory copied, train-final to T on 1 device
    final/c1             probe/c1d1's, train-final to T on 1 device (the reference)

Each command compiles its layout's programs, the suite's costliest part: so the layouts are few,
and each covers several things (8 devices and FSDP at once, then a resume on 1); the paused run
reuses the programs of train/d8-fsdp and train/d1, compiled in this process.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"
TINY_LLAMA = REPO / "configs" / "tiny-llama.yaml"
# held-out batches of 6: split over a data axis of 2, held whole where 8 devices do not divide them
TRAIN_SETS = ["train.steps=12", "train.eval_every=6", "train.log_every=3", "train.warmup_steps=2",
              "data.eval_batch_size=6"]
TRAIN_LAYOUTS = {"d1": ["mesh.data=1"], "d2": ["mesh.data=2"], "d8-fsdp": ["mesh.data=8", "mesh.fsdp=true"]}
LLAMA_LAYOUTS = {"d1": ["mesh.data=1"], "d8-fsdp": ["mesh.data=8", "mesh.fsdp=true"]}
PROBE_LAYOUTS = {"c1d1": ["mesh.candidates=1", "mesh.data=1"], "c2d2": ["mesh.candidates=2", "mesh.data=2"],
                 "c4d2-fsdp": ["mesh.candidates=4", "mesh.data=2", "mesh.fsdp=true"]}


def laggrow(*args) -> None:
    from laggrow.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise SystemExit(f"laggrow {' '.join(map(str, args))}: exit {result.exit_code}\n{result.output}")


def sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def main(out: Path) -> None:
    import jax

    assert jax.device_count() == 8, f"expected 8 forced CPU devices, got {jax.devices()}"
    for name, layout in TRAIN_LAYOUTS.items():
        laggrow("train", TINY, "--out", out / "train" / name, *sets(TRAIN_SETS + layout))
    resumed = out / "train" / "d8-fsdp-then-1"
    laggrow("train", TINY, "--out", resumed, *sets(TRAIN_SETS + TRAIN_LAYOUTS["d8-fsdp"]), "--until", "6")
    laggrow("train", TINY, "--out", resumed, *sets(TRAIN_SETS + ["mesh.data=1"]), "--resume")
    for name, layout in LLAMA_LAYOUTS.items():
        laggrow("train", TINY_LLAMA, "--out", out / "llama" / name, *sets(TRAIN_SETS + layout))

    pool = {"source": str(out / "train" / "d1"), "target": {"n_layers": 3},
            "strategies": ["stack", "zero_top", "copy_zero"], "seeds": [0], "lag_steps": 4, "final_steps": 8,
            "eval_points": 4, "eval_every": 2, "train": {"lr": 0.003}, "chunk_size": 0}
    pool_file = out / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(pool))
    for name, layout in PROBE_LAYOUTS.items():
        laggrow("probe", pool_file, "--out", out / "probe" / name, *sets(layout))
    chunked_probe(out, pool)
    for name, source in (("c1", "c1d1"), ("c2d2-then-1", "c2d2")):
        shutil.copytree(out / "probe" / source, out / "final" / name)
        laggrow("train-final", out / "final" / name, *sets(["mesh.candidates=1", "mesh.data=1"]))


def chunked_probe(out: Path, pool: dict) -> None:
    """probe/c2d1-chunked: `chunk_size: auto` with LAGGROW_MEMORY set so that the two devices of
    the candidate axis hold 2 of the 3 candidates a step (one device would hold 1): two chunks of
    2, the second padded, each spread over the 2 devices."""
    import os

    from laggrow import resources, run_dir
    from laggrow.pool.spec import pool_config_from_dict

    auto = {**pool, "chunk_size": "auto"}
    pool_file = out / "pool-auto.yaml"
    pool_file.write_text(yaml.safe_dump(auto))
    target = pool_config_from_dict(auto).target_run_config(run_dir.read_run_config(Path(pool["source"])))
    fixed, per_candidate = resources.pool_chunk_bytes(target, 3)
    os.environ[resources.MEMORY_ENV] = str(fixed + 5 * per_candidate // 2)
    try:
        laggrow("probe", pool_file, "--out", out / "probe" / "c2d1-chunked",
                *sets(["mesh.candidates=2", "mesh.data=1"]))
    finally:
        del os.environ[resources.MEMORY_ENV]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
