"""Strategies against forgetting, one module each; `build_strategy` imports the one it needs."""

from seqmtl.strategies.base import (
    Losses,
    StageContext,
    Strategy,
    build_strategy,
    register,
    strategy_names,
    total,
)

__all__ = [
    "Losses",
    "StageContext",
    "Strategy",
    "build_strategy",
    "register",
    "strategy_names",
    "total",
]
