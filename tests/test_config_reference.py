"""docs/configuration.md is what tools/config_reference.py makes from the config dataclasses now:
a key added, removed, retyped, given another default or another comment makes this fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_tool():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_current():
    tool = load_tool()
    assert tool.OUT.read_text() == tool.reference(), "docs/configuration.md is stale: run tools/config_reference.py"


def test_every_key_of_every_section_is_in_it_with_its_meaning():
    import dataclasses

    tool = load_tool()
    text = tool.OUT.read_text()
    for path, cls, _ in tool.sections():
        assert f"## `{path}`" in text
        comments = tool.field_comments(cls)
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text and comments.get(f.name), (path, f.name)
