"""lwf: learning without forgetting (Li & Hoiem 2016): distil the old tasks' outputs of a frozen
copy of the model, taken at the start of the stage, on the new task's images. Needs no old data."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmtl import config
from seqmtl.strategies.base import Losses, StageContext, Term, register


def softmax_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)) over dim 1, averaged over the other dims."""
    log_p = F.log_softmax(teacher / temperature, 1)
    log_q = F.log_softmax(student / temperature, 1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)
    return temperature**2 * kl.mean()


def sigmoid_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·KL(Bern(sigmoid(teacher/T)) ‖ Bern(sigmoid(student/T))) summed over the last dim,
    averaged over the others: the soft-target cross-entropy minus the teacher's entropy, zero when
    they agree."""
    p = torch.sigmoid(teacher / temperature)
    kl = F.binary_cross_entropy_with_logits(
        student / temperature, p, reduction="none"
    ) - F.binary_cross_entropy_with_logits(teacher / temperature, p, reduction="none")
    return temperature**2 * kl.sum(-1).mean()


def distil_seg(student: Tensor, teacher: Tensor, temperature: float) -> dict[str, Tensor]:
    """Per-location KL of the class distributions at temperature T, on the stride-8 logits."""
    return {"seg": softmax_kl(student, teacher, temperature)}


def distil_det(student: Tensor, teacher: Tensor, temperature: float) -> dict[str, Tensor]:
    """Per-location Bernoulli KL of the class and centerness logits at temperature T, and the L1
    distance of the box distances (softplus of the raw outputs, in strides) weighted by the
    teacher's detection score sqrt(sigmoid(best class)·sigmoid(centerness)), so boxes are
    distilled where the teacher sees objects. Outputs are (B, N, 4 + 1 + C)."""
    score = torch.sqrt(torch.sigmoid(teacher[..., 5:].amax(-1)) * torch.sigmoid(teacher[..., 4]))
    box = (F.softplus(student[..., :4]) - F.softplus(teacher[..., :4])).abs().sum(-1)
    return {
        "det_cls": sigmoid_kl(student[..., 5:], teacher[..., 5:], temperature),
        "det_ctr": sigmoid_kl(student[..., 4:5], teacher[..., 4:5], temperature),
        "det_box": (score * box).sum() / score.sum().clamp(min=1e-6),
    }


def distil_cls(student: Tensor, teacher: Tensor, temperature: float) -> dict[str, Tensor]:
    """KL of the class distributions at temperature T."""
    return {"cls": softmax_kl(student, teacher, temperature)}


DISTILLATION: dict[str, Callable[[Tensor, Tensor, float], dict[str, Tensor]]] = {
    "seg": distil_seg,
    "det": distil_det,
    "cls": distil_cls,
}


@register("lwf")
class LwF(Term):
    """L += λ·Σ_old distil(student_old(x_new), teacher_old(x_new)).

    The teacher is a deep copy of the model at the start of the stage, in eval mode with no
    gradient; it is not part of the model, so the loop's model.train() never touches it. One
    forward of the student gives both the new task's outputs and the old tasks'. Choices where
    the paper is silent: T² scaling of the KL terms (Hinton et al. 2015) so λ keeps its meaning
    across temperatures; detection distils dense maps rather than proposals (see `distil_det`).

    params: lambda (λ ≥ 0), temperature (T > 0; the paper's 2).
    """

    distils = True

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        super().__init__(options, key, replay)
        self.weight = self.number("lambda")
        self.temperature = self.number("temperature", open_low=True)

    def before_stage(self, ctx: StageContext) -> None:
        self.teacher = copy.deepcopy(ctx.model).eval().requires_grad_(False)

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        with torch.no_grad():
            teacher = self.teacher(images.to(ctx.device), tasks=tuple(ctx.old_tasks))
        distilled: dict[str, Tensor] = {}
        for task in ctx.old_tasks:
            distilled |= DISTILLATION[task](outputs[task], teacher[task], self.temperature)
        return {"lwf": distilled}
