"""`laggrow strategies`: the registry of growth strategies, as a table or as JSON."""

from __future__ import annotations

from typing import Annotated

import typer

from laggrow.cli.errors import user_errors


@user_errors
def strategies_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List every growth strategy: kind, whether it preserves the function, definition, reference."""
    import json

    from laggrow.growth import strategies_table

    rows = strategies_table()
    if as_json:
        print(json.dumps(rows, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Growth strategies (compose as WIDTH+DEPTH, e.g. hypercloning+stack_middle)",
                  show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("function\npreserving", max_width=18)
    table.add_column("definition", ratio=3)
    table.add_column("reference", ratio=2)
    for row in rows:
        flag = "[green]yes[/]" if row["function_preserving"] else "no"
        if row["preserving_note"]:
            flag += f" ({row['preserving_note']})"
        definition = row["definition"]
        if row["options"]:
            definition += " [dim](options: " + ", ".join(row["options"]) + ")[/]"
        table.add_row(row["name"], row["kind"], flag, definition, row["reference"])
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("strategies")(strategies_command)
