"""Strategies against forgetting; importing this package registers all of them."""

from seqmtl.strategies import naive, replay
from seqmtl.strategies.base import (
    STRATEGIES,
    Losses,
    StageContext,
    Strategy,
    build_strategy,
    register,
    total,
)

__all__ = [
    "STRATEGIES",
    "Losses",
    "StageContext",
    "Strategy",
    "build_strategy",
    "naive",
    "register",
    "replay",
    "total",
]
