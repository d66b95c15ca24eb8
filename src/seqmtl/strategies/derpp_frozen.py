"""derpp_frozen: dark experience replay++ (Buzzega et al. 2020) on a backbone frozen after the
first task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from seqmtl.model import backbone_parameters
from seqmtl.strategies.base import register
from seqmtl.strategies.derpp import DERpp


@register("derpp_frozen")
class DERppFrozen(DERpp):
    """`derpp`'s loss and update, with the backbone's parameters fixed: only the neck and the
    head learn the later tasks, and they alone are kept by the replayed labels and outputs.

    Stage 1 trains naively, so the backbone is the one segmentation left, frozen from stage 2 on
    (the feature-extraction baseline of Li & Hoiem 2017, with the shared neck and head still
    trained and protected). Why: on the real mirror classification fails against its reference
    even under naive fine-tuning, which protects nothing, so the gap is not forgetting's price
    but what the earlier stages did to the backbone (docs/measurements.md, "Real data"). With no
    backbone gradient, the backward pass also stops at the neck.

    cfg: alpha (≥ 0, as derpp's). BatchNorm statistics follow `model.batchnorm` (frozen by default).
    """

    def load_model(
        self,
        make_model: Callable[[], nn.Module],
        checkpoint: dict[str, Any] | None,
        tasks: list[str],
    ) -> nn.Module:
        """`DERpp.load_model`'s model with its backbone's parameters frozen."""
        model = super().load_model(make_model, checkpoint, tasks)
        for parameter in backbone_parameters(model):
            parameter.requires_grad_(False)
        return model
