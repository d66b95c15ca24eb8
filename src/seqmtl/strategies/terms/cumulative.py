"""cumulative: every stage trains on the full training data of every task so far (joint training
on all the tasks seen, the upper bound the sequential strategies are measured against)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from seqmtl.data.datasets import collate
from seqmtl.strategies.base import Losses, StageContext, Term, register


def endless(loader: DataLoader) -> Iterator[tuple[Tensor, list[dict[str, Any]]]]:
    """The loader's batches, epoch after epoch (each epoch reshuffled and augmented afresh)."""
    while True:
        yield from loader


@register("cumulative")
class Cumulative(Term):
    """L += Σ_old L_old, each old task's term on the next batch of its full training set.

    Each old task's training set is cycled through a seeded shuffling loader of the stage's batch
    size that keeps its last, smaller batch, one batch of each old task per step: every pass over
    an old set shows each of its samples once, and with the mini sets' equal sizes a pass takes
    an epoch of the new task. Weight 1; no params.
    """

    adds_tasks = True

    def before_stage(self, ctx: StageContext) -> None:
        self.batches: dict[str, Iterator[tuple[Tensor, list[dict[str, Any]]]]] = {}
        for k, task in enumerate(ctx.old_tasks):
            loader = DataLoader(
                ctx.train_data(task),
                batch_size=ctx.batch_size,
                shuffle=True,
                collate_fn=collate,
                generator=torch.Generator().manual_seed(ctx.seed + 1 + k),
            )
            self.batches[task] = endless(loader)
        self.drawn = 0

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        losses = {task: ctx.loss(task, *next(self.batches[task])) for task in ctx.old_tasks}
        self.drawn += 1
        return losses

    def resume_state(self) -> dict[str, Any]:
        return {"drawn": self.drawn}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Draw again, unused, the old tasks' batches drawn before the stop (data loading only):
        the loaders' shuffling and augmentation then continue where they stopped."""
        for _ in range(state["drawn"]):
            for batches in self.batches.values():
                next(batches)
        self.drawn = state["drawn"]
