"""The predictor study: 3 probe protocols x 3 seeds x 2 corpora, every candidate trained to T.

    .venv/bin/python study/run.py [--out runs/study] [--only kjv/reset-warmup ...]

For each corpus (the bundled King James Bible, `kjv`, and Shakespeare's plays, `shakespeare`) it
trains the base of configs/small.yaml on it, then for each protocol probes study/pool.yaml and
trains every candidate to T, through the laggrow CLI. Rerunning skips what is finished (train-final
resumes from its checkpoints). study/tables.py turns the directories into docs/study.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("kjv", "shakespeare")
# One probe protocol per entry: the pool keys it sets over study/pool.yaml (pool/config.py documents them).
PROTOCOLS = {
    # the demo's until now: fresh AdamW moments, linear warmup over 16 steps to the peak, cosine decay
    "reset-warmup": {"optimizer_state": "reset", "train": {"warmup_steps": 16}},
    # the source's moments carried through growth, no warmup: the peak at once
    "carry-nowarmup": {"optimizer_state": "carry", "train": {"warmup_steps": 0}},
    # fresh moments, no warmup, the peak held over the k probe steps, then the cosine decay
    "reset-peak": {"optimizer_state": "reset", "probe_lr": "peak"},
}


def laggrow(*args: str) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "laggrow"), *args]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {time.time() - t0:.0f} s", flush=True)


def pool_file(out: Path, corpus: str, protocol: str) -> Path:
    raw = yaml.safe_load((ROOT / "study" / "pool.yaml").read_text())
    extra = PROTOCOLS[protocol]
    raw["train"] = {**raw["train"], **extra.get("train", {})}
    raw.update({k: v for k, v in extra.items() if k != "train"})
    raw["source"] = str(out / corpus / "base")
    path = out / corpus / f"{protocol}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--only", nargs="*", help="corpus/protocol pairs to run (default: all)")
    args = parser.parse_args()
    out = args.out.absolute()
    for corpus in CORPORA:
        base = out / corpus / "base"
        if not (base / "summary.json").is_file():
            laggrow("train", "configs/small.yaml", "--set", f"data.corpus={corpus}", "--out", str(base),
                    *(["--resume"] if base.is_dir() else []))
    # protocol-major order, so that a partial study covers both corpora
    for protocol in PROTOCOLS:
        for corpus in CORPORA:
            if args.only and f"{corpus}/{protocol}" not in args.only:
                continue
            directory = out / corpus / protocol
            if (directory / "final.json").is_file():
                continue
            path = pool_file(out, corpus, protocol)
            if not (directory / "probe.json").is_file():
                laggrow("probe", str(path), "--out", str(directory))
            laggrow("train-final", str(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
