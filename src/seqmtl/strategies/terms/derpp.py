"""derpp: the logit replay of dark experience replay++ (Buzzega et al. 2020): the old tasks'
buffered samples are replayed against the outputs the model gave them when their task had been
learned. With the replay term beside it this is DER++; alone, DER."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import to_dtype

from seqmtl import config
from seqmtl.runtime import eval_mode
from seqmtl.strategies.base import Losses, StageContext, Term, register


@register("derpp")
class DERpp(Term):
    """L += alpha·Σ_old MSE(f(x'), z'), the paper's DER++ being L_new + alpha·this + β·replay.

    x' is a batch of an old task's buffered samples (`replay_buffer`: per_task of each, batch_size
    per step), z' the raw outputs (segmentation and class logits, detection's box, centerness and
    class maps before any activation) that the model gave x' when that task's stage had ended.

    Where the paper does not fit dense tasks: it records z' during the task's own training and
    augments x' afresh on every replay, but a new crop changes what every output location means.
    Here each old task's buffered samples are recorded once, at the start of the stage after its
    own (the weights its stage ended with, eval mode), as one fixed augmented view each, and the
    views (uint8) and outputs are carried to the later stages. The buffer is the fixed per-task
    sample of the replay component, not a reservoir over the stream: the task boundaries are
    known.

    params: alpha (≥ 0).
    """

    uses_buffer = True

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.weight = self.number("alpha")
        self.records: dict[str, tuple[Tensor, Tensor]] = {}

    def record(self, ctx: StageContext, task: str) -> None:
        """Store one view of each of `task`'s buffered samples and the model's outputs on it."""
        dataset, indices = ctx.buffer.items[task]
        images = torch.stack([dataset[int(i)][0] for i in indices])
        with torch.no_grad(), eval_mode(ctx.model) as model:
            outputs = [
                model(chunk.to(ctx.device), tasks=(task,))[task].float().cpu()
                for chunk in images.split(ctx.batch_size)
            ]
        self.records[task] = (to_dtype(images, torch.uint8, scale=True), torch.cat(outputs))

    def before_stage(self, ctx: StageContext) -> None:
        for task in ctx.old_tasks:
            if task not in self.records:
                self.record(ctx, task)

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        """Per old task, the mean squared error of the outputs on a batch of recorded views
        against the recorded outputs."""
        errors = {}
        for task in ctx.old_tasks:
            views, recorded = self.records[task]
            picks = torch.randint(
                len(views), (self.replay.batch_size,), generator=ctx.buffer.generator
            )
            x = to_dtype(views[picks], torch.float32, scale=True).to(ctx.device)
            prediction = ctx.model(x, tasks=(task,))[task].float()
            errors[task] = F.mse_loss(prediction, recorded[picks].to(ctx.device))
        return {"derpp": errors}

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = dict(state["records"])
