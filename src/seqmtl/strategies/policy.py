"""The model policy: one trunk shared by every task or one per task, and which shared parts are
frozen from which stage on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from seqmtl.models.model import IndependentModel, shared_modules
from seqmtl.strategies.base import Part, StageContext, Term

PARTS = (
    "backbone",
    "neck",
    "head",
)  # `seqmtl.models.model.shared_modules`; "head": its hidden layers


class Policy(Part):
    """`trunk: shared`: one model for every task, the parts named in `freeze` (backbone, neck,
    head: the head's hidden layers) fixed from the stage given on (`freeze: {backbone: 2}`: the
    backbone stage 1 left serves stages 2 and 3 unchanged, the feature-extraction baseline of
    Li & Hoiem 2017 with the rest still trained). With no gradient, the backward pass also stops
    at the frozen part. Stage 1 trains naively, so a part is frozen from stage 2 at the earliest.

    `trunk: per_task`: one backbone + neck + head per task (`IndependentModel`), a fresh member
    (the unified model's initialisation, pretrained backbone) for the new task, the old tasks'
    members frozen: nothing is shared, so nothing can be forgotten, at the price of one network
    per task. It breaks the one-head rule on purpose (the isolation reference); it takes no
    terms (the old members are frozen) and freezes nothing else.
    """

    name = "policy"

    def __init__(self, freeze: dict[str, Any], trunk: str, terms: list[Term]) -> None:
        super().__init__({}, "strategy", None)
        for part, stage in freeze.items():
            if part not in PARTS:
                raise ValueError(f"strategy.freeze.{part}: not a part (one of {', '.join(PARTS)})")
            if not (isinstance(stage, int) and not isinstance(stage, bool) and stage >= 2):
                raise ValueError(
                    f"strategy.freeze.{part} must be the stage it is frozen from (an integer "
                    f">= 2: stage 1 trains naively), got {stage!r}"
                )
        if trunk == "per_task" and (terms or freeze):
            what = "terms" if terms else "freeze"
            raise ValueError(
                f"strategy.{what}: trunk per_task freezes every old task's member; it takes "
                "no terms and freezes nothing else"
            )
        self.freeze, self.trunk = freeze, trunk

    def load_model(
        self,
        make_model: Callable[[], nn.Module],
        checkpoint: dict[str, Any] | None,
        tasks: list[str],
    ) -> nn.Module:
        """The model that serves `tasks` (stage len(tasks)), holding the weights of `checkpoint`
        when given. One trunk per task loads a checkpoint of its own kind (keys
        members.<task>.…) or a unified one (stage 1's), whose weights become the member of each
        task it served."""
        if self.trunk == "per_task":
            return self.members(make_model, checkpoint, tasks)
        model = make_model()
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        frozen = {part for part, stage in self.freeze.items() if stage <= len(tasks)}
        for part, module in shared_modules(model):
            if part in frozen:
                module.requires_grad_(False)
        return model

    def members(
        self,
        make_model: Callable[[], nn.Module],
        checkpoint: dict[str, Any] | None,
        tasks: list[str],
    ) -> IndependentModel:
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
        if self.trunk == "per_task":
            ctx.model.freeze(ctx.old_tasks)
