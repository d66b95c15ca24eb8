"""l2sp: the starting point as the reference (L2-SP, Li, Grandvalet & Davoine 2018).

Penalty alpha/2·‖w_S - w_S⁰‖² over the backbone's parameters S, with w⁰ the pretrained weights the
backbone started from (ImageNet), not the weights of an earlier stage: the features stay near
those every task began on. L2-SP's second part, β/2·‖w‖² on the other parameters, is the
optimiser's weight decay (`train.weight_decay`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seqmtl import config
from seqmtl.models.backbones import BACKBONES, Backbone
from seqmtl.strategies.base import Losses, StageContext, Term, register


def pretrained_weights(model: nn.Module) -> dict[str, Tensor]:
    """The pretrained weights of every `Backbone` in `model`, under its parameters' names."""
    anchor = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Backbone):
            name = next(n for n, kind in BACKBONES.items() if type(module) is kind)
            try:
                fresh = BACKBONES[name](True).state_dict()
            except OSError as error:
                raise ValueError(
                    f"strategy.terms.l2sp: no pretrained weights of backbone {name} here ({error})"
                ) from None
            anchor |= {f"{prefix}.{n}": fresh[n] for n, _ in module.named_parameters()}
    return anchor


@register("l2sp")
class L2SP(Term):
    """L += alpha/2·Σ (w - w⁰)² over the trainable backbone parameters, w⁰ the pretrained weights.

    Applies from stage 2 on, as every term (stage 1 trains naively); the anchor is rebuilt from
    the backbone's pretrained weights (deterministic: they ship in a package), not saved. It
    means what L2-SP means only for a model that started from them (`model.pretrained`).

    params: alpha (≥ 0).
    """

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.alpha = self.number("alpha")
        self.anchor: dict[str, Tensor] = {}

    def before_stage(self, ctx: StageContext) -> None:
        self.anchor = {
            name: weight.to(ctx.device)
            for name, weight in pretrained_weights(ctx.model).items()
            if ctx.model.get_parameter(name).requires_grad
        }

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        squares = [((ctx.model.get_parameter(n) - w) ** 2).sum() for n, w in self.anchor.items()]
        penalty = torch.stack(squares).sum() if squares else torch.zeros((), device=ctx.device)
        return {"l2sp": {"penalty": self.alpha / 2 * penalty}}
