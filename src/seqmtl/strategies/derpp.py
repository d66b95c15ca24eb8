"""derpp: dark experience replay++ (Buzzega et al. 2020): replay the old tasks' samples with their
labels and with the outputs the model gave them when their task had been learned."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import to_dtype

from seqmtl import config
from seqmtl.model import eval_mode
from seqmtl.strategies.base import Losses, StageContext, Strategy, register
from seqmtl.tasks import Targets


@register("derpp")
class DERpp(Strategy):
    """L = L_new + alpha·Σ_old MSE(f(x'), z') + β·Σ_old L_old(x'', y'').

    x' and x'' are independent batches of an old task's buffered samples, z' the raw outputs
    (segmentation and class logits, detection's box, centerness and class maps before any
    activation) that the model gave x' when that task's stage had ended, and β the replay
    component's weight (`replay_buffer.weight`; its per_task and batch_size serve both terms).

    Where the paper does not fit dense tasks: it records z' during the task's own training and
    augments x' afresh on every replay, but a new crop changes what every output location means.
    Here each old task's buffered samples are recorded once, at the start of the stage after its
    own (the weights its stage ended with, eval mode), as one fixed augmented view each, and the
    views (uint8) and outputs are carried to the later stages; x'' is augmented afresh as in
    `replay`. The buffer is the replay component's fixed per-task sample, not a reservoir over
    the stream: the task boundaries are known.

    cfg: alpha (≥ 0).
    """

    replays = True

    def __init__(self, cfg: dict[str, Any], replay: config.ReplayBuffer | None = None) -> None:
        super().__init__(cfg, replay)
        self.alpha = self.number("alpha")
        self.records: dict[str, tuple[Tensor, Tensor]] = {}

    def record(self, ctx: StageContext, task: str) -> None:
        """Store one view of each of `task`'s buffered samples and the model's outputs on it."""
        dataset, indices = self.buffer.items[task]
        images = torch.stack([dataset[int(i)][0] for i in indices])
        with torch.no_grad(), eval_mode(ctx.model) as model:
            outputs = [
                model(chunk.to(ctx.device), tasks=(task,))[task].float().cpu()
                for chunk in images.split(ctx.batch_size)
            ]
        self.records[task] = (to_dtype(images, torch.uint8, scale=True), torch.cat(outputs))

    def before_stage(self, ctx: StageContext) -> None:
        super().before_stage(ctx)
        for task in ctx.old_tasks:
            if task not in self.records:
                self.record(ctx, task)

    def recalled(self, ctx: StageContext) -> dict[str, Tensor]:
        """Per old task, the mean squared error of the outputs on a batch of recorded views
        against the recorded outputs."""
        errors = {}
        for task in ctx.old_tasks:
            images, outputs = self.records[task]
            picks = torch.randint(
                len(images), (self.replay.batch_size,), generator=self.buffer.generator
            )
            x = to_dtype(images[picks], torch.float32, scale=True).to(ctx.device)
            prediction = ctx.model(x, tasks=(task,))[task].float()
            errors[task] = F.mse_loss(prediction, outputs[picks].to(ctx.device))
        return errors

    def losses(self, ctx: StageContext, images: Tensor, targets: Targets) -> Losses:
        return super().losses(ctx, images, targets) | {"derpp": self.recalled(ctx)}

    def term_weight(self, ctx: StageContext, term: str) -> float:
        return self.alpha if term == "derpp" else super().term_weight(ctx, term)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = dict(state["records"])
