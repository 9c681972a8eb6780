"""Growth transforms: pure functions that grow a trained model's params into a larger model's.

    grown = grow(params, src_cfg, dst_cfg, "hypercloning+stack_middle", key)
    opt_state = grow_opt_state(opt_state, src_cfg, dst_cfg, "hypercloning+stack_middle", key)

Strategies live in a registry (`STRATEGIES`, `get_strategy`) with their metadata; `depth.py`,
`recipes.py` (layer ranges, SOLAR, LLaMA Pro) and `width.py` register them, `ops.py` holds the
array primitives they are made of, and `layout.py` says what each axis of each weight is. No I/O,
no printing, no training here.
"""

from __future__ import annotations

from laggrow.growth import depth, recipes, width  # noqa: F401  (importing registers the strategies)
from laggrow.growth.registry import (
    STRATEGIES,
    Strategy,
    get_strategy,
    parse_strategy,
    strategies_markdown,
    strategies_table,
    with_strategies_table,
)
from laggrow.growth.transform import (
    check_request,
    grow,
    grow_opt_state,
    grown_state,
    is_function_preserving,
    plan_stages,
)

__all__ = [
    "STRATEGIES",
    "Strategy",
    "check_request",
    "get_strategy",
    "grow",
    "grow_opt_state",
    "grown_state",
    "is_function_preserving",
    "parse_strategy",
    "plan_stages",
    "strategies_markdown",
    "strategies_table",
    "with_strategies_table",
]
