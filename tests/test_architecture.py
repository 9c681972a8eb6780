"""The layout's rules, checked on the source: no import cycle, every import goes down the layers or
sideways within one, library code never imports the CLI, file names spelled only in the store,
files written only through the store."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "laggrow"


def _module_name(path: Path) -> str:
    parts = ("laggrow", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts).removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
    """module -> the laggrow modules it imports (at any depth: lazy imports count too)."""
    modules = {_module_name(f): f for f in SRC.rglob("*.py")}
    graph = {}
    for name, file in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("laggrow"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("laggrow"))
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _is_cli(module: str) -> bool:
    return module in ("laggrow.cli", "laggrow.__main__") or module.startswith("laggrow.cli.")


def test_the_graph_is_read():
    graph = _graph()
    # a few edges that must be seen, or the checks below would pass on an empty graph
    assert "laggrow.store" in graph["laggrow.jobs.training"]
    assert "laggrow.cli.errors" in graph["laggrow.cli.train"]
    assert "laggrow.pool.step" in graph["laggrow.pool.trainer"]


def test_library_code_never_imports_the_cli():
    offenders = [f"{m} -> {d}" for m, deps in _graph().items() if not _is_cli(m)
                 for d in deps if _is_cli(d)]
    assert offenders == []


# The layers, lowest first: a module imports only from its own layer or the ones below it. A
# package is placed whole; every top-level module is foundation.
LAYERS = [
    # config, config_engine, store, model, data, train, checkpoint, run_dir, mesh, ...: know nothing above
    ("foundation", ()),
    # growth strategies on parameters; statistics on records (no jax)
    ("growth, analysis", ("laggrow.growth", "laggrow.analysis")),
    # tables, figures and report.md from records and the analysis' numbers
    ("report", ("laggrow.report",)),
    # a pool trained and probed; adaptive stacking (it writes its report, and borrows pool's step)
    ("pool, stack", ("laggrow.pool", "laggrow.stack")),
    # the jobs the commands run; Hugging Face in and out (export reads a pool's candidates)
    ("jobs, hf", ("laggrow.jobs", "laggrow.hf")),
    ("cli", ("laggrow.cli", "laggrow.__main__")),
]

# Imports that go up a layer, each with why. Empty: keep it so.
UPWARD_ALLOWED: set[tuple[str, str]] = set()


def _layer(module: str) -> int:
    for i, (_, packages) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return i
    assert module.count(".") <= 1, f"{module} is in a package no layer names: place it in LAYERS"
    return 0


def test_every_import_goes_down_the_layers_or_sideways():
    graph = _graph()
    assert {_layer(m) for m in graph} == set(range(len(LAYERS)))  # every layer holds something
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) -> {d} ({LAYERS[_layer(d)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if _layer(d) > _layer(m) and (m, d) not in UPWARD_ALLOWED]
    assert upward == []


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of concerns
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles, done, path = [], set(), []

    def visit(m: str) -> None:
        if m in path:
            cycles.append(" -> ".join(path[path.index(m):] + [m]))
            return
        if m in done:
            return
        path.append(m)
        for d in sorted(edges[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(edges):
        visit(m)
    assert cycles == []


FILE_NAMES = ("config.json", "metrics.jsonl", "summary.json", "tokenizer.json", "curves.jsonl", "probe.json",
              "final.json", "pool.json", "experiment.json", "timings.json", "correlation.json", "growth.json",
              "import.json", "tokenizer_config.json", "model.safetensors", "model.safetensors.index.json",
              "generation_config.json", "laggrow-export.json")


@pytest.mark.parametrize("file", sorted(p for p in SRC.rglob("*.py") if p.name != "store.py"),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_store_names_files_and_writes_them(file: Path):
    tree = ast.parse(file.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        # a file name as a bare string literal (messages and docstrings may mention them in prose)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            assert node.value not in FILE_NAMES, f"{file.name}:{node.lineno} spells {node.value!r}; use laggrow.store"
        # writing a file other than through the store
        if isinstance(node, ast.Attribute) and node.attr in ("write_text", "write_bytes") \
                and not (isinstance(node.value, ast.Name) and node.value.id == "store"):
            raise AssertionError(f"{file.name}:{node.lineno} writes with .{node.attr}(); use laggrow.store")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "open" and node.args:
            mode = node.args[0] if isinstance(node.func, ast.Attribute) else (node.args[1:2] or [None])[0]
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and re.search("[wax+]", mode.value):
                raise AssertionError(f"{file.name}:{node.lineno} opens a file for writing; use laggrow.store")


def test_laggrow_never_imports_torch_or_transformers():
    """They are the `hf` extra's, for tests and fixtures: laggrow import and export read and write
    Hugging Face's files with safetensors and tokenizers alone."""
    offenders = []
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{file.relative_to(SRC)}: {n}" for n in names
                          if n.split(".")[0] in ("torch", "transformers")]
    assert offenders == []


@pytest.mark.parametrize("script", sorted((SRC.parent.parent / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_what_exists(script: Path):
    """Benchmarks import laggrow inside their functions; a module that moved must fail here, not
    the next time someone measures."""
    import importlib
    import importlib.util

    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("laggrow"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{script.name}: from {node.module} import {alias.name}"
