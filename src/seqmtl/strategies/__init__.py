"""Strategies against forgetting; importing this package registers all of them."""

from seqmtl.strategies import (
    cumulative,
    ewc,
    gradnorm,
    independent,
    lwf,
    naive,
    pcgrad,
    replay,
    uncertainty,
)
from seqmtl.strategies.base import (
    STRATEGIES,
    Losses,
    StageContext,
    Strategy,
    build_strategy,
    register,
    shared_parameters,
    total,
)

__all__ = [
    "STRATEGIES",
    "Losses",
    "StageContext",
    "Strategy",
    "build_strategy",
    "cumulative",
    "ewc",
    "gradnorm",
    "independent",
    "lwf",
    "naive",
    "pcgrad",
    "register",
    "replay",
    "shared_parameters",
    "total",
    "uncertainty",
]
