"""uncertainty: replay whose losses are weighted by learned homoscedastic uncertainty
(Kendall, Gal & Cipolla 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seqmtl import config
from seqmtl.strategies.base import Losses, StageContext, Strategy, register, total


@register("uncertainty")
class Uncertainty(Strategy):
    """L = Σ_i exp(-s_i)·L_i + s_i over the losses in play (the new task's and each replayed old
    task's), with s_i = log sigma_i² learned with the model (the loop's optimiser, no weight decay,
    in their own param group at learning rate `lr`).

    Choices: one form for every task, exp(-s)·L + s, which is twice Kendall et al.'s regression
    form ½·exp(-s)·L + ½·s (same optimum s* = log L; starts, at s = 0, as replay's plain sum);
    each s_i starts at 0 for a task first in play and is carried to the next stage otherwise (the
    noise level belongs to the task). Logs the weights w_<task> = exp(-s_<task>) every step.
    The s_i get their own learning rate: Adam moves a parameter by at most its lr per step, so at
    the model's lr, warmed up and decayed, a stage of a few hundred steps cannot carry s far from
    0 and the weighting stays close to replay's plain sum.

    Always with replay (the `replay_buffer` section's per_task and batch_size; its weight is unused:
    the weights are learned).

    cfg: lr (> 0, the s_i's learning rate).
    """

    replays = True

    def __init__(self, cfg: dict[str, Any], replay: config.ReplayBuffer | None = None) -> None:
        super().__init__(cfg, replay)
        self.lr = self.number("lr", open_low=True)
        self.log_variances = nn.ParameterDict()

    def before_stage(self, ctx: StageContext) -> None:
        super().before_stage(ctx)
        for task in [ctx.task, *ctx.old_tasks]:
            if task not in self.log_variances:
                self.log_variances[task] = nn.Parameter(torch.zeros(()))
        self.log_variances.to(ctx.device)

    def backward(self, ctx: StageContext, losses: Losses) -> None:
        s = self.log_variances
        ctx.log(**{f"w_{n}": torch.exp(-s[n]).item() for n in losses})
        torch.stack([torch.exp(-s[n]) * total(losses[n]) + s[n] for n in losses]).sum().backward()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.log_variances.values())

    def parameters_lr(self, stage_lr: float) -> float:
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {n: s.detach().cpu() for n, s in self.log_variances.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in state.items():
            self.log_variances[n] = nn.Parameter(s.clone())
