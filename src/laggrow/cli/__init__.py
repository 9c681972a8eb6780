"""The `laggrow` command line: a Typer app with one thin command per verb.

The verbs live in `laggrow.cli.<verb>`, each a thin shell over library code that registers itself
on the app; `laggrow.cli.errors` is the one error boundary and `laggrow.cli.progress` the display. Heavy imports
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
COMMAND_MODULES = ["train", "grow", "strategies", "probe", "correlate", "run", "stack"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"laggrow.cli.{_name}").register(app)


def _quiet_closed_loop(hook):
    """sys.unraisablehook, except for the "Event loop is closed" that Orbax's write callbacks
    raise from tensorstore's threads (a traceback each) after a failed save has given up."""
    def quiet(unraisable):
        err = unraisable.exc_value
        if not (isinstance(err, RuntimeError) and str(err) == "Event loop is closed"):
            hook(unraisable)
    return quiet


def main() -> None:
    import logging
    import sys
    import warnings

    from laggrow import compile_cache

    # before any verb imports jax: JAX reads its persistent-cache settings from the environment then
    compile_cache.configure()

    # Orbax logs each failed background write with its traceback (hundreds of lines for one full
    # disk); the error boundary says it in one line.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
    # and a failed write leaves tensorstore coroutines that were never awaited, which Python
    # reports at exit: noise after the one line that already said what happened
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    app()
