"""The `laggrow` command line: a Typer app with one thin command per verb.

The verbs live in `laggrow.commands.<verb>`; each registers itself on the app. Heavy imports
(jax, flax, orbax, matplotlib) happen inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="laggrow",
    help="Grow Transformer LMs and choose the growth strategy with Landscape-Aware Growing (LAG).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Grow Transformer LMs and choose the growth strategy with Landscape-Aware Growing (LAG)."""


# Order is the order of `laggrow --help`.
COMMAND_MODULES = ["train", "grow", "strategies", "probe", "correlate", "run"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"laggrow.commands.{_name}").register(app)


def main() -> None:
    app()
