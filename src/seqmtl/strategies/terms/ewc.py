"""ewc: elastic weight consolidation (Kirkpatrick et al. 2017), online form (Schwarz et al. 2018).

Penalty λ·Σ_k F_k (θ_k - θ*_k)² over the shared parameters, with F the diagonal Fisher and θ*
the weights at the end of the last stage. After a task's stage, F ← gamma·F + F_task and θ* ← θ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seqmtl import config
from seqmtl.models.model import shared_parameters
from seqmtl.runtime import eval_mode
from seqmtl.strategies.base import Losses, StageContext, Term, register, total


def empirical_fisher(ctx: StageContext, task: str) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of the trainable shared parameters on `task`'s training data:
    F = mean over samples n of (∂L_task(x_n, y_n)/∂θ)², one sample at a time, in eval mode."""
    model = ctx.model
    params = {n: p for n, p in shared_parameters(model).items() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    dataset = ctx.train_data(task)
    with eval_mode(model):
        for i in range(len(dataset)):
            image, target = dataset[i]
            loss = total(ctx.loss(task, image[None], [target]))
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, grad in zip(params, grads, strict=True):
                if grad is not None:
                    fisher[name] += grad.detach() ** 2 / len(dataset)
    return fisher


@register("ewc")
class EWC(Term):
    """L += λ·Σ F(θ - θ*)² on the trainable shared parameters (trunk and the head's hidden layers).

    Fisher: the empirical Fisher (squared gradients of the task's own loss at the true labels),
    per sample, on every training sample of the task (augmented as in training), with the model
    in eval mode (BatchNorm on its running statistics). It is computed after each stage for that
    stage's task; stage 1 always trains naively, so the Fisher of any old task the carried state
    lacks (segmentation, at stage 2) is computed at the start of the stage, on the weights that
    task's stage ended with. Online accumulation F ← gamma·F + F_task (gamma = 1: the sum of the
    tasks' Fishers, gamma = 0: only the latest); one anchor θ*, the weights at the end of the
    latest stage.
    BatchNorm running statistics are buffers, not parameters, and are not protected.

    params: lambda (λ ≥ 0), gamma (in [0, 1]).
    """

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.strength = self.number("lambda")
        self.gamma = self.number("gamma", 0.0, 1.0)
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.tasks: list[str] = []

    def consolidate(self, ctx: StageContext, task: str) -> None:
        """Fold `task`'s Fisher into F (F ← gamma·F + F_task); anchor θ* at the current weights."""
        new = empirical_fisher(ctx, task)
        self.fisher = {
            name: self.gamma * self.fisher[name] + f if name in self.fisher else f
            for name, f in new.items()
        }
        self.anchor = {n: ctx.model.get_parameter(n).detach().clone() for n in self.fisher}
        self.tasks.append(task)

    def penalty(self, model: nn.Module) -> Tensor:
        """λ·Σ F(θ - θ*)² over the shared parameters (zero before any task is consolidated)."""
        params = shared_parameters(model)
        terms = [(f * (params[n] - self.anchor[n]) ** 2).sum() for n, f in self.fisher.items()]
        if not terms:
            return torch.zeros((), device=next(iter(params.values())).device)
        return self.strength * torch.stack(terms).sum()

    def before_stage(self, ctx: StageContext) -> None:
        self.fisher = {n: f.to(ctx.device) for n, f in self.fisher.items()}
        self.anchor = {n: a.to(ctx.device) for n, a in self.anchor.items()}
        for task in ctx.old_tasks:
            if task not in self.tasks:
                self.consolidate(ctx, task)

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        return {"ewc": {"penalty": self.penalty(ctx.model)}}

    def after_stage(self, ctx: StageContext) -> None:
        self.consolidate(ctx, ctx.task)

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor, "tasks": self.tasks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
        self.tasks = list(state["tasks"])
