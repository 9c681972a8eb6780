"""The stacking comparison on the study's three corpora, three seeds each, every method at equal FLOPs.

    .venv/bin/python study/stack.py [--out runs/study] [--only kjv ...]

For each corpus of study/corpora.py it runs configs/stack-demo.yaml (1 -> 6 layers, adaptive
against top, middle and scratch, every method trained to adaptive's total FLOPs, results on the
test set) with seeds 0, 1 and 2, through the laggrow CLI, into OUT/stack-<corpus>. Rerunning
continues what is unfinished. study/tables.py turns the directories into docs/study-tables.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from corpora import corpora

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("kjv", "shakespeare", "pystdlib")
SEEDS = "[0,1,2]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--only", nargs="*", help="corpora to run (default: all)")
    args = parser.parse_args()
    out = args.out.absolute()
    corpus_of = corpora(out / "corpora")
    for corpus in CORPORA:
        if args.only and corpus not in args.only:
            continue
        directory = out / f"stack-{corpus}"
        if (directory / "stack.json").is_file():
            continue
        cmd = [str(ROOT / ".venv" / "bin" / "laggrow"), "stack", "configs/stack-demo.yaml", "--out", str(directory),
               "--set", f"data.corpus={corpus_of[corpus]}", "--set", f"stack.seeds={SEEDS}"]
        print("+", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"  {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
