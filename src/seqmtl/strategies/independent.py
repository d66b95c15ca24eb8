"""independent: one backbone + neck (and head) per task, the isolation reference.

It breaks the one-head rule on purpose: nothing is shared, so nothing can be forgotten, at the
price of one network per task (about 3x the parameters of the unified model at stage 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from seqmtl.strategies.base import StageContext, Strategy, register


class IndependentModel(nn.Module):
    """A separate UnifiedModel (trunk + head) per task; task t's outputs are read from its own
    member's channels. Each member's head still emits every task's channels (the others' unused
    channels·(C_all - C_t) weights are a negligible share), so the count errs on the high side.
    Members of frozen tasks take no gradient and stay in eval mode whatever `train` is called."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.num_classes: dict[str, int] = dict(next(iter(members.values())).num_classes)
        self.frozen: set[str] = set()

    def freeze(self, tasks: Iterable[str]) -> None:
        """Stop training the members of `tasks`: no gradient, eval mode from now on."""
        for task in tasks:
            self.members[task].requires_grad_(False)
            self.frozen.add(task)
        self.train(self.training)

    def train(self, mode: bool = True) -> IndependentModel:
        super().train(mode)
        for task in self.frozen:
            self.members[task].eval()
        return self

    def forward(self, x: Tensor, tasks: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """Outputs of `tasks` (every member's when None), each from its own member only."""
        return {t: self.members[t](x, tasks=(t,))[t] for t in tasks or tuple(self.members)}


@register("independent")
class Independent(Strategy):
    """Trains a fresh member (`make_model()`: the unified model's initialisation, pretrained
    backbone) for the new task on its loss alone; the old tasks' members are frozen.

    Loads a checkpoint of this model (keys members.<task>.…) or of a plain unified model (stage
    1's), whose weights become the member of each task it served. No params.
    """

    replays = False  # the old tasks' members are frozen

    def load_model(
        self,
        make_model: Callable[[], nn.Module],
        checkpoint: dict[str, Any] | None,
        tasks: list[str],
    ) -> nn.Module:
        members: dict[str, nn.Module] = {}
        if checkpoint is not None:
            state = checkpoint["model"]
            for task in checkpoint["tasks"]:
                prefix = f"members.{task}."
                own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
                members[task] = make_model()
                members[task].load_state_dict(own or state)
        for task in tasks:
            if task not in members:
                members[task] = make_model()
        return IndependentModel(members)

    def before_stage(self, ctx: StageContext) -> None:
        ctx.model.freeze(ctx.old_tasks)
