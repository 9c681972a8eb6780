"""How numbers are written in tables, terminal and markdown alike."""

from __future__ import annotations

NONE = "-"


def num(value: float | None, spec: str) -> str:
    return NONE if value is None else format(value, spec)


def nats(value: float | None) -> str:
    """A loss (or a difference of losses), to the 4 decimals the records support."""
    return num(value, ".4f")


def pct(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.3g}%"


def step_label(step: int, result: dict) -> str:
    """`0 init`, `16 lag`, `320 final`, or the bare step."""
    for marker, at in (("init", 0), ("lag", result.get("lag_steps")), ("final", result.get("final_step"))):
        if step == at:
            return f"{step} {marker}"
    return str(step)


def md_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; `align` has one letter per column, l or r (default: first l, the rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    align = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
