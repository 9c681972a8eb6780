"""The up-scaling study: does LAG at k pick the recipe that is best after T, on two corpora, three seeds?

    .venv/bin/python study/upscale.py [--out runs/upscale-study] [--pools x1.5 x2] [--corpora kjv shakespeare]

For each corpus (the bundled King James Bible and Shakespeare's plays) it trains configs/upscale.yaml's
base (configs/upscale-base.yaml: an 8-layer Llama-family model with a 1024-token BPE) on it, then for
each of configs/upscale.yaml's pools (the recipes at about 1.5x and 2x depth) probes every recipe
k steps and trains it to T with seeds 0, 1 and 2, through the laggrow CLI. The pools are exactly the
config's (only their seeds are the study's), so `laggrow run configs/upscale.yaml` runs this study's
kjv half. Rerunning skips what is finished. study/upscale_tables.py turns the directories into
docs/upscaling-tables.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "upscale.yaml"
CORPORA = ("kjv", "shakespeare")
SEEDS = [0, 1, 2]


def laggrow(*args: str) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "laggrow"), *args]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {time.time() - t0:.0f} s", flush=True)


def experiment() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def pool_file(out: Path, corpus: str, name: str, pool: dict) -> Path:
    """The config's pool `name` on `corpus`'s base, with the study's seeds, written beside the base."""
    path = out / corpus / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**pool, "source": str(out / corpus / "base"), "seeds": SEEDS}, sort_keys=False))
    return path


def main() -> int:
    config = experiment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "upscale-study")
    parser.add_argument("--pools", nargs="*", default=list(config["pools"]), help="which of the config's pools")
    parser.add_argument("--corpora", nargs="*", default=list(CORPORA))
    args = parser.parse_args()
    out = args.out.absolute()
    base_config = CONFIG.parent / config["base"]
    for corpus in args.corpora:
        base = out / corpus / "base"
        if not (base / "summary.json").is_file():
            laggrow("train", str(base_config), "--set", f"data.corpus={corpus}", "--out", str(base),
                    *(["--resume"] if base.is_dir() else []))
    # pool-major order, so that a partial study covers both corpora
    for name in args.pools:
        for corpus in args.corpora:
            directory = out / corpus / name
            if (directory / "final.json").is_file():
                continue
            path = pool_file(out, corpus, name, config["pools"][name])
            if not (directory / "probe.json").is_file():
                laggrow("probe", str(path), "--out", str(directory))
            laggrow("train-final", str(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
