"""Timing that survives a noisy machine: interleaved rounds, medians and percentiles, ratios.

Used by the benchmark (`seqmtl.tools.bench`) and by the evaluate stage's inference figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from seqmtl.models.backbones import Backbone
from seqmtl.models.inference import for_inference


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, device: torch.device, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds of each of `fns` in each of `rounds` rounds (after `warmup` untimed ones); every
    round runs each once, starting one later each round, with `device` synchronised around each
    run when it is a GPU."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile of `seconds`, in ms."""
    deciles = statistics.quantiles(seconds, n=10, method="inclusive")
    return {
        "median_ms": round(1000 * statistics.median(seconds), 2),
        "p10_ms": round(1000 * deciles[0], 2),
        "p90_ms": round(1000 * deciles[-1], 2),
    }


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over the rounds of a's time / b's time."""
    return round(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)), 3)


def first_backbone(model: nn.Module) -> Backbone:
    """The model's (first) backbone."""
    return next(m for m in model.modules() if isinstance(m, Backbone))


def inference_timings(
    model: nn.Module, device: torch.device, size: int, rounds: int
) -> dict[str, Any]:
    """Interleaved inference times of one (1, 3, size, size) image (see the module docstring):
    "backbone", "model" (both inference copies) and "eager", with model / backbone and
    model / eager."""
    x = torch.rand(1, 3, size, size, device=device)
    variants = {
        "backbone": for_inference(first_backbone(model)),
        "model": for_inference(model),
        "eager": model.eval(),
    }
    with torch.no_grad():
        times = interleaved({k: (lambda m=m: m(x)) for k, m in variants.items()}, rounds, device)
    return {
        **{name: summary(t) for name, t in times.items()},
        "model_vs_backbone": ratio(times, "model", "backbone"),
        "model_vs_eager": ratio(times, "model", "eager"),
        "image_size": size,
        "batch_size": 1,
        "rounds": rounds,
    }
