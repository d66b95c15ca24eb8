"""replay: a seeded buffer of old-task samples mixed into every step; L = L_new + λ·Σ L_old."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seqmtl.data import TaskDataset, collate
from seqmtl.strategies.base import Losses, StageContext, Strategy, register, total
from seqmtl.tasks import Targets


class ReplayBuffer:
    """`per_task` fixed training samples of each old task, drawn once with a seeded generator.

    Samples are drawn again through the dataset on every use, so they are augmented afresh.
    """

    def __init__(self, per_task: int, seed: int) -> None:
        self.per_task = per_task
        self.generator = torch.Generator().manual_seed(seed)
        self.items: dict[str, tuple[TaskDataset, Tensor]] = {}

    def add(self, task: str, dataset: TaskDataset) -> None:
        """Keep the indices of `per_task` samples of `dataset` (all of them if it has fewer)."""
        chosen = torch.randperm(len(dataset), generator=self.generator)[: self.per_task]
        self.items[task] = (dataset, chosen.sort().values)

    def sample(self, task: str, batch_size: int) -> tuple[Tensor, list[dict[str, Any]]]:
        """`batch_size` buffered samples of `task`, drawn uniformly with replacement."""
        dataset, indices = self.items[task]
        picks = indices[torch.randint(len(indices), (batch_size,), generator=self.generator)]
        return collate([dataset[int(i)] for i in picks])


@register("replay")
class Replay(Strategy):
    """Adds λ-weighted losses of `batch_size` buffered samples of every old task to each step.

    cfg: per_task (buffer size per old task), batch_size (replayed samples per old task and
    step), weight (λ).
    """

    def before_stage(self, ctx: StageContext) -> None:
        for key in ("per_task", "batch_size"):
            if int(self.cfg[key]) <= 0:
                raise ValueError(f"{self.name}.{key} must be positive, got {self.cfg[key]!r}")
        self.buffer = ReplayBuffer(int(self.cfg["per_task"]), ctx.seed)
        for task in ctx.old_tasks:
            self.buffer.add(task, ctx.train_data(task))

    def losses(self, ctx: StageContext, images: Tensor, targets: Targets) -> Losses:
        losses = super().losses(ctx, images, targets)
        for task in ctx.old_tasks:
            losses[task] = ctx.loss(task, *self.buffer.sample(task, int(self.cfg["batch_size"])))
        return losses

    def backward(self, ctx: StageContext, losses: Losses) -> None:
        weight = float(self.cfg["weight"])
        new = total(losses[ctx.task])
        (new + weight * sum(total(losses[t]) for t in ctx.old_tasks)).backward()
