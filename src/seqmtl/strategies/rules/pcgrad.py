"""pcgrad: the task losses' gradients on the shared parameters pass through PCGrad
(Yu et al. 2020, "Gradient surgery for multi-task learning")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seqmtl.models.model import shared_parameters
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


def project_conflicting(grads: Tensor, generator: torch.Generator) -> Tensor:
    """Σ_i g_i^PC for (T, P) gradients: each g_i^PC starts at g_i and, against every other g_j in
    a random order, loses its component along g_j when g_i^PC·g_j < 0:
    g_i^PC ← g_i^PC - (g_i^PC·g_j / ‖g_j‖²)·g_j. Without conflicts this is the plain sum."""
    projected = grads.clone()
    for i in range(len(grads)):
        for j in torch.randperm(len(grads), generator=generator).tolist():
            dot = projected[i] @ grads[j]
            if j != i and dot < 0:
                projected[i] -= dot / grads[j].square().sum() * grads[j]
    return projected.sum(0)


@register("pcgrad")
class PCGrad(Rule):
    """The task losses (the new task's and each old task's that a term adds, unweighted) each
    give a gradient; on the shared parameters (trunk and the head's hidden layers, as one
    vector) they are combined by `project_conflicting`, in an order drawn from a generator
    seeded with the stage's seed; the task-specific parameters (the head's last conv) get the
    plain sum. Logs the number of conflicting pairs (negative dot products) per step. The
    terms' own entries (penalties, distillations) add the gradient of their weighted sum
    unchanged; a task-loss term's weight (`replay_buffer.weight`) is unused. No params.
    """

    def before_stage(self, ctx: StageContext) -> None:
        self.generator = torch.Generator().manual_seed(ctx.seed)

    def resume_state(self) -> dict[str, Any]:
        return {"order": self.generator.get_state()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["order"])

    def backward(self, ctx: StageContext, losses: Losses, weights: dict[str, float]) -> None:
        names, own = split(losses, ctx)
        extra = regularisation(losses, weights, own)
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        shared_ids = {id(p) for p in shared_parameters(ctx.model).values()}
        shared = [id(p) in shared_ids for p in params]
        per_loss = []
        for k, name in enumerate(names):
            grads = torch.autograd.grad(
                total(losses[name]),
                params,
                retain_graph=k < len(names) - 1 or extra is not None,
                allow_unused=True,
            )
            per_loss.append(
                [
                    torch.zeros_like(p) if g is None else g
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        average_(g for grads in per_loss for g in grads)  # over data-parallel processes
        flat = torch.stack(
            [
                torch.cat([g.flatten() for g, s in zip(grads, shared, strict=True) if s])
                for grads in per_loss
            ]
        )
        ctx.log(conflicts=int((flat @ flat.T < 0).triu(1).sum()))
        combined = iter(
            project_conflicting(flat, self.generator).split(
                [p.numel() for p, s in zip(params, shared, strict=True) if s]
            )
        )
        for k, (p, s) in enumerate(zip(params, shared, strict=True)):
            p.grad = next(combined).view_as(p) if s else sum(grads[k] for grads in per_loss)
        if extra is not None:
            extra.backward()
