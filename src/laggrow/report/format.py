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


def model_shape(model: dict) -> str:
    """`4 layers, d_model 64, 4 heads, d_ff 256` from a config.json's model section; a llama's
    with its architecture and key/value heads (`llama: 4 layers, d_model 64, 4 heads (2
    key/value), d_ff 256`), a gpt's as it always read."""
    arch = model.get("arch", "gpt")
    kv = "" if arch == "gpt" else f" ({model.get('n_kv_heads') or model['n_heads']} key/value)"
    return ("" if arch == "gpt" else f"{arch}: ") + (
        f"{model['n_layers']} layers, d_model {model['d_model']}, {model['n_heads']} heads{kv}, d_ff {model['d_ff']}")


def md_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; `align` has one letter per column, l or r (default: first l, the rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    align = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
