"""The study's corpora: the two bundled ones, and a third unlike prose that it assembles itself.

    .venv/bin/python study/corpora.py [--out runs/study/corpora]     # writes pystdlib.jsonl

`pystdlib` is the source code of the Python standard library this interpreter ships (one document
per module file, as a .jsonl corpus with a `text` field): code, not prose, in a few MB, and on
every machine that runs laggrow. Test suites, IDLE, lib2to3, the bundled wheels and the demos are
left out, so the corpus is the library itself. Which files go in is a pure function of the
interpreter's version; the manifest beside it records that version, the files and a sha256 of the
corpus, so a study on another Python can say what it read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ("kjv", "shakespeare")
# Folders of the standard library that are not the library: tests, tools and vendored code.
LEFT_OUT = {"test", "tests", "idlelib", "lib2to3", "ensurepip", "turtledemo", "site-packages", "__pycache__"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py"))
            if not set(p.relative_to(root).parts[:-1]) & LEFT_OUT and not p.parent.name.startswith("config-")]


def write_pystdlib(out: Path) -> Path:
    """OUT/pystdlib.jsonl and its manifest OUT/pystdlib.json; kept when already written by this
    Python (the manifest says which)."""
    path, manifest = out / "pystdlib.jsonl", out / "pystdlib.json"
    version = platform.python_version()
    if path.is_file() and manifest.is_file() and json.loads(manifest.read_text()).get("python") == version:
        return path
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    lines = [json.dumps({"path": str(p.relative_to(root)), "text": p.read_text(encoding="utf-8", errors="replace")})
             for p in files]
    text = "".join(line + "\n" for line in lines)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    manifest.write_text(json.dumps({"python": version, "files": len(files), "bytes": len(text.encode()),
                                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                                    "left_out": sorted(LEFT_OUT)}, indent=2) + "\n")
    return path


def corpora(out: Path) -> dict[str, str]:
    """Name -> what `data.corpus` is set to, for every corpus of the study."""
    return {**{name: name for name in BUNDLED}, "pystdlib": str(write_pystdlib(out))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study" / "corpora")
    args = parser.parse_args()
    path = write_pystdlib(args.out.absolute())
    print(path, json.loads((path.parent / "pystdlib.json").read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
