"""Strategies against forgetting, composed of parts: loss terms (`terms/`), one gradient rule
(`rules/`) and a model policy (`policy.py`); `build_strategy` imports the parts it needs."""

from seqmtl.strategies.base import (
    NAIVE,
    Losses,
    StageContext,
    Strategy,
    build_strategy,
    part_names,
    register,
    total,
)

__all__ = [
    "NAIVE",
    "Losses",
    "StageContext",
    "Strategy",
    "build_strategy",
    "part_names",
    "register",
    "total",
]
