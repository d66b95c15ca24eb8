"""independent: one backbone + neck (and head) per task, the isolation reference.

It breaks the one-head rule on purpose: nothing is shared, so nothing can be forgotten, at the
price of one network per task (about 3x the parameters of the unified model at stage 3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from seqmtl.model import IndependentModel
from seqmtl.strategies.base import StageContext, Strategy, register


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
