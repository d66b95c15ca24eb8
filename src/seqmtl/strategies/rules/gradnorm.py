"""gradnorm: the task losses' weights balanced by GradNorm (Chen et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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
from seqmtl.training.distributed import average_


@register("gradnorm")
class GradNorm(Rule):
    """L = Σ_i w_i·L_i over the task losses (the new task's and each old task's that a term
    adds), plus the terms' own entries (penalties, distillations) at their fixed weights.

    Each step, with W the last shared layer's weight (`model.shared_layer()`):
    G_i = ‖∇_W w_i·L_i‖, Ḡ = mean_i G_i, L̃_i = L_i / L_i(0), r_i = L̃_i / mean_j L̃_j, and the
    weights alone take a step on L_grad = Σ_i |G_i - Ḡ·r_i^alpha| (the targets Ḡ·r_i^alpha held
    constant), then are clipped at 0 and renormalised to sum to the number of losses. The model's
    gradient is that of Σ_i w_i·L_i with the weights of this step held constant.

    Choices: L_i(0) is the mean loss over the stage's first `initial_steps` steps (a running
    mean until then: one batch's loss is too noisy to measure a training rate by); the weights
    start each stage at 1 for the new task and `old_weight` for each old one (renormalised), with
    their own Adam optimiser; G_i = w_i·‖∇_W L_i‖ needs no second-order graph. The weights used
    in each step go to the strategy log (w_<task>), hence to plots/stageN/strategy.csv.

    The weights are GradNorm's: a task-loss term's own weight (`replay_buffer.weight`) is unused.
    Its weights move in `step`, after the model's update, so a step not taken moves neither.

    params: alpha (≥ 0, the paper's 1.5), lr (> 0, the
    weights' Adam learning rate), old_weight (> 0, each old task's initial weight against 1),
    initial_steps (≥ 1, the steps averaged into L_i(0)).
    """

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.alpha = self.number("alpha")
        self.lr = self.number("lr", open_low=True)
        self.old_weight = self.number("old_weight", open_low=True)
        self.initial_steps = int(self.number("initial_steps", 1))
        self.weights: Tensor | None = None

    def before_stage(self, ctx: StageContext) -> None:
        self.weights = None
        self.device = ctx.device

    def resume_state(self) -> dict[str, Any]:
        started = self.weights is not None
        return {
            "gradnorm": {
                "weights": self.weights.detach().cpu(),
                "optimizer": self.optimizer.state_dict(),
                "initial": self.initial.cpu(),
                "averaged": self.averaged,
            }
            if started
            else None
        }

    def load_resume_state(self, state: dict[str, Any]) -> None:
        saved = state["gradnorm"]
        if saved is None:
            return
        self.weights = saved["weights"].to(self.device).requires_grad_()
        self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.initial = saved["initial"].to(self.device)
        self.averaged = saved["averaged"]

    def start(self, ctx: StageContext, names: list[str], losses: Tensor) -> None:
        """Initial weights (1 for the new task, `old_weight` for the others, summing to the
        number of losses), their optimiser, and the running mean of the initial losses L_i(0)."""
        initial = torch.tensor([1.0 if n == ctx.task else self.old_weight for n in names])
        self.weights = (initial * len(names) / initial.sum()).to(losses.device).requires_grad_()
        self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)
        self.initial = torch.zeros_like(losses)
        self.averaged = 0

    def backward(self, ctx: StageContext, losses: Losses, weights: dict[str, float]) -> None:
        names, own = split(losses, ctx)
        values = torch.stack([total(losses[n]) for n in names])
        observed = values.detach().clone()
        average_([observed])  # over data-parallel processes: the global batch's losses
        if self.weights is None:
            self.start(ctx, names, observed)
        if self.averaged < self.initial_steps:
            self.averaged += 1
            self.initial += (observed - self.initial) / self.averaged
        ctx.log(**{f"w_{n}": w for n, w in zip(names, self.weights.tolist(), strict=True)})
        layer = ctx.model.shared_layer().weight
        grads = [torch.autograd.grad(v, layer, retain_graph=True)[0] for v in values]
        average_(grads)
        norms = torch.stack([g.norm() for g in grads])
        loss = (self.weights.detach() * values).sum()
        extra = regularisation(losses, weights, own)
        (loss if extra is None else loss + extra).backward()

        grad_norms = self.weights * norms
        ratios = observed / self.initial
        target = (grad_norms.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        self.optimizer.zero_grad()
        (grad_norms - target).abs().sum().backward()

    def step(self) -> None:
        """The weights' step on L_grad, then their clipping at 0 and renormalisation."""
        self.optimizer.step()
        with torch.no_grad():
            self.weights.clamp_(min=0)
            self.weights.mul_(len(self.weights) / self.weights.sum())
