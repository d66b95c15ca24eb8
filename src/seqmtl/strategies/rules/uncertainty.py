"""uncertainty: the task losses weighted by learned homoscedastic uncertainty
(Kendall, Gal & Cipolla 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seqmtl import config
from seqmtl.strategies.base import (
    Losses,
    Rule,
    StageContext,
    register,
    regularisation,
    split,
    total,
)


@register("uncertainty")
class Uncertainty(Rule):
    """L = Σ_i exp(-s_i)·L_i + s_i over the task losses (the new task's and each old task's that
    a term adds), plus the terms' own entries at their fixed weights, with s_i = log sigma_i²
    learned with the model (the loop's optimiser, no weight decay, in their own param group at
    learning rate `lr`).

    Choices: one form for every task, exp(-s)·L + s, which is twice Kendall et al.'s regression
    form ½·exp(-s)·L + ½·s (same optimum s* = log L; starts, at s = 0, as replay's plain sum);
    each s_i starts at 0 for a task first in play and is carried to the next stage otherwise (the
    noise level belongs to the task). Logs the weights w_<task> = exp(-s_<task>) every step.
    The s_i get their own learning rate: Adam moves a parameter by at most its lr per step, so at
    the model's lr, warmed up and decayed, a stage of a few hundred steps cannot carry s far from
    0 and the weighting stays close to replay's plain sum.

    The weights are learned: a task-loss term's own weight (`replay_buffer.weight`) is unused.

    params: lr (> 0, the s_i's learning rate).
    """

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.lr = self.number("lr", open_low=True)
        self.log_variances = nn.ParameterDict()

    def before_stage(self, ctx: StageContext) -> None:
        for task in [ctx.task, *ctx.old_tasks]:
            if task not in self.log_variances:
                self.log_variances[task] = nn.Parameter(torch.zeros(()))
        self.log_variances.to(ctx.device)

    def backward(self, ctx: StageContext, losses: Losses, weights: dict[str, float]) -> None:
        s = self.log_variances
        names, own = split(losses, ctx)
        ctx.log(**{f"w_{n}": torch.exp(-s[n]).item() for n in names})
        loss = torch.stack([torch.exp(-s[n]) * total(losses[n]) + s[n] for n in names]).sum()
        extra = regularisation(losses, weights, own)
        (loss if extra is None else loss + extra).backward()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.log_variances.values())

    def parameters_lr(self, stage_lr: float) -> float:
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {n: s.detach().cpu() for n, s in self.log_variances.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in state.items():
            self.log_variances[n] = nn.Parameter(s.clone())
