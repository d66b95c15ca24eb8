"""sum: the plain weighted sum of the losses, L = Σ_k weight_k · L_k."""

from __future__ import annotations

import torch

from seqmtl.strategies.base import Losses, Rule, StageContext, register, total


@register("sum")
class Sum(Rule):
    """The gradient of Σ_k weight_k · L_k over every entry of the step's losses: the new task's
    (weight 1) and each term's at the term's weight. No params."""

    def backward(self, ctx: StageContext, losses: Losses, weights: dict[str, float]) -> None:
        torch.stack([weights[k] * total(parts) for k, parts in losses.items()]).sum().backward()
