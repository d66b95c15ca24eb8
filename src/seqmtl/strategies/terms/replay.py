"""replay: experience replay. Each step adds the losses of buffered old-task samples with their
labels: L += λ·Σ_old L_old(x', y'), x' a batch of the old task's buffered training samples."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from seqmtl import config
from seqmtl.strategies.base import Losses, StageContext, Term, register


@register("replay")
class Replay(Term):
    """Per old task, the loss of `replay_buffer.batch_size` of its buffered samples (the
    `replay_buffer` section's per_task of each, drawn once per stage from its training set with
    the stage's seed; augmented afresh on every draw), weighted by `replay_buffer.weight` (λ)
    under the sum rule. No params of its own."""

    uses_buffer = True
    adds_tasks = True

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.weight = replay.weight

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        size = self.replay.batch_size
        return {task: ctx.loss(task, *ctx.buffer.sample(task, size)) for task in ctx.old_tasks}
