"""The predictor study: 3 probe protocols x 3 seeds x 3 corpora, every candidate trained to T.

    .venv/bin/python study/run.py [--out runs/study] [--only kjv/carry-peak ...]

For each corpus (the bundled King James Bible, `kjv`, Shakespeare's plays, `shakespeare`, and the
Python standard library's source code, `pystdlib`, assembled by study/corpora.py) it trains the
base of configs/small.yaml on it, then for each protocol probes study/pool.yaml and trains every
candidate to T, through the laggrow CLI. Rerunning skips what is finished (train-final resumes
from its checkpoints). study/tables.py turns the directories into docs/study-tables.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml
from corpora import corpora

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("kjv", "shakespeare", "pystdlib")
# One probe protocol per entry: the pool keys it sets over study/pool.yaml (pool/spec.py documents
# them). All carry AdamW's moments through the growth; they differ in the learning rate right after it.
# The base (configs/small.yaml) ends its cosine schedule at 3e-4; the pool's peak is 1e-3.
PROTOCOLS = {
    # the default until this study: the peak of 1e-3 at once, a jump of 3.3x from where the base ended
    "carry-peak": {"optimizer_state": "carry", "train": {"warmup_steps": 0}},
    # no jump: the pool's schedule starts at the rate the base ended at and decays from there
    "carry-continue": {"optimizer_state": "carry", "train": {"lr": "source_end", "warmup_steps": 0}},
    # re-warm from the rate the base ended at to the peak over 16 steps, then decay
    "carry-rewarm": {"optimizer_state": "carry", "train": {"warmup_steps": 16, "warmup_start": "source_end"}},
}


def laggrow(*args: str) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "laggrow"), *args]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {time.time() - t0:.0f} s", flush=True)


def pool_file(out: Path, corpus: str, protocol: str) -> Path:
    """The pool of `protocol` on `corpus`'s base, written beside the base."""
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
    corpus_of = corpora(out / "corpora")
    for corpus in CORPORA:
        base = out / corpus / "base"
        if not (base / "summary.json").is_file():
            laggrow("train", "configs/small.yaml", "--set", f"data.corpus={corpus_of[corpus]}", "--out", str(base),
                    *(["--resume"] if base.is_dir() else []))
    # protocol-major order, so that a partial study covers every corpus
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
