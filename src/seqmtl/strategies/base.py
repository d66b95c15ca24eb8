"""The strategy interface: how a stage turns batches of the new task into a parameter update.

A stage calls, in this order: `load_model` once (the model the stage trains, with the previous
stage's weights), `before_stage(ctx)` once, then for every step `losses(ctx, images, targets)`
and `backward(ctx, losses)` (the loop zeroes the gradients before and steps the optimiser after),
then `after_stage(ctx)` once. `state_dict()` is saved with the stage's checkpoint and given back
through `load_state_dict` to the next stage's strategy of the same name. Each strategy is one
module of this package named as the strategy, its class registered with `@register`; its params
are its own section of params.yaml, present even if empty (dvc.yaml's stages 2 and 3 depend on
the section that `strategy` names).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from seqmtl.data import TaskDataset
from seqmtl.tasks import Targets, Task

Losses = dict[str, dict[str, Tensor]]
"""Loss components per term for one step, e.g. {"det": {"det_cls": …}, "seg": {"ce": …}}.
Keys are task names, or a strategy's own terms (an "ewc" penalty, an "lwf" distillation)."""


@dataclass
class StageContext:
    """What a strategy may use: the model, the tasks, the one being learned, their data."""

    model: nn.Module
    tasks: dict[str, Task]
    task: str
    old_tasks: list[str]
    device: torch.device
    seed: int
    batch_size: int
    train_data: Callable[[str], TaskDataset]
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def loss(self, task: str, images: Tensor, targets: Targets) -> dict[str, Tensor]:
        """Loss components of `task` on a batch, from a forward pass of the model."""
        outputs = self.model(images.to(self.device), tasks=(task,))
        return self.tasks[task].loss(outputs, targets, images.shape[-1])

    def log(self, **values: float) -> None:
        """Record per-step values (loss weights, …); they go to plots/stageN/strategy.csv."""
        self.history.append({"step": self.step, **values})


def total(parts: dict[str, Tensor]) -> Tensor:
    """The sum of one term's loss components."""
    return torch.stack(list(parts.values())).sum()


class Strategy:
    """Plain fine-tuning on the new task; subclasses override what they change."""

    name = "strategy"

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def number(
        self, key: str, low: float = 0.0, high: float = math.inf, *, open_low: bool = False
    ) -> float:
        """`cfg[key]` as a float in [low, high] ((low, high] with `open_low`); anything else
        raises a ValueError naming the param `<strategy>.<key>`."""
        value = self.cfg.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and (low < value if open_low else low <= value) and value <= high):
            bound = f"{'>' if open_low else '≥'} {low:g}"
            if high < math.inf:
                bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
            raise ValueError(f"{self.name}.{key} must be a number {bound}, got {value!r}")
        return float(value)

    def load_model(
        self,
        make_model: Callable[[], nn.Module],
        checkpoint: dict[str, Any] | None,
        tasks: list[str],
    ) -> nn.Module:
        """The model that serves `tasks`, holding the weights of `checkpoint` when given."""
        model = make_model()
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        return model

    def before_stage(self, ctx: StageContext) -> None:
        """Prepare for the stage (buffers, frozen copies, …)."""

    def losses(self, ctx: StageContext, images: Tensor, targets: Targets) -> Losses:
        """Loss components per term for one training batch of the new task."""
        return {ctx.task: ctx.loss(ctx.task, images, targets)}

    def backward(self, ctx: StageContext, losses: Losses) -> None:
        """Accumulate the gradients of the update (default: of the plain sum of all terms)."""
        torch.stack([total(parts) for parts in losses.values()]).sum().backward()

    def after_stage(self, ctx: StageContext) -> None:
        """Finish the stage (Fisher information, …)."""

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the strategy itself, optimised with the model's."""
        return []

    def parameters_lr(self, stage_lr: float) -> float:
        """The learning rate of `parameters()` (their own param group; default: the stage's)."""
        return stage_lr

    def state_dict(self) -> dict[str, Any]:
        """State carried to the next stage."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved at the end of the previous stage."""


STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator adding a strategy to the registry under `name` (also its `name`)."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return add


def strategy_names() -> list[str]:
    """Every strategy: the modules of this package but `base`, each named as its strategy."""
    package = importlib.import_module("seqmtl.strategies")
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "base")


def build_strategy(name: str, params: dict[str, Any]) -> Strategy:
    """The strategy `name`, configured by its own params section (params[name], may be absent).

    Only its own module is imported, so a stage depends on the code of the strategy it runs."""
    if name not in strategy_names():
        known = ", ".join(strategy_names())
        raise ValueError(f"strategy: unknown strategy {name!r}; known: {known}")
    importlib.import_module(f"seqmtl.strategies.{name}")
    return STRATEGIES[name](params.get(name) or {})
