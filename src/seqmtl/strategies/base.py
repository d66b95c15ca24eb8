"""The strategy interface: how a stage turns batches of the new task into a parameter update.

A stage calls, in this order: `load_model` once (the model the stage trains, with the previous
stage's weights), `before_stage(ctx)` once, then for every step `losses(ctx, images, targets)`
and `backward(ctx, losses)` (the loop zeroes the gradients before and steps the optimiser after),
then `after_stage(ctx)` once. `state_dict()` is saved with the stage's checkpoint and given back
through `load_state_dict` to the next stage's strategy of the same name; `resume_state()` is
saved with a stage's resume state and given back through `load_resume_state` after
`before_stage` when a stopped stage resumes. Each strategy is one
module of this package named as the strategy, its class registered with `@register`, its params
beside its `name` in params.yaml's `strategy` section (defaults: conf/strategy/<name>.yaml).

Replay is a component, not a strategy's parent: the `replay_buffer` section of params.yaml
configures one buffer of old-task samples, which the replay-based strategies (`replays = True`)
always use and any other adds with `replay: true` in its section (ewc + replay, lwf + replay).
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

from seqmtl import config
from seqmtl.data import TaskDataset, collate
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


class Strategy:
    """Plain fine-tuning on the new task, with replay when configured; subclasses override what
    they change.

    With `replay` (the `replay_buffer` section), each step adds the losses of `batch_size`
    buffered samples of every old task (`per_task` of each, drawn once per stage from its training
    set with the stage's seed), and the default update weighs them by `weight` (λ):
    L = L_new + λ·Σ_old L_old (+ the strategy's own terms at their `term_weight`).
    """

    name = "strategy"
    replays: bool | None = None  # True: always (defined on replayed losses); False: never;
    # None: as its own section's `replay` (true | false, default false) says

    def __init__(self, cfg: dict[str, Any], replay: config.ReplayBuffer | None = None) -> None:
        self.cfg = cfg
        self.replay = replay
        self.read: set[str] = set()

    def number(
        self, key: str, low: float = 0.0, high: float = math.inf, *, open_low: bool = False
    ) -> float:
        """`cfg[key]` as a float in [low, high] ((low, high] with `open_low`); anything else
        raises a ValueError naming the param `strategy.<key>`."""
        self.read.add(key)
        value = self.cfg.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and (low < value if open_low else low <= value) and value <= high):
            bound = f"{'>' if open_low else '≥'} {low:g}"
            if high < math.inf:
                bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
            raise ValueError(f"strategy.{key} must be a number {bound}, got {value!r}")
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
        """Prepare for the stage (the replay buffer; subclasses: frozen copies, …)."""
        if self.replay is not None:
            self.buffer = ReplayBuffer(self.replay.per_task, ctx.seed)
            for task in ctx.old_tasks:
                self.buffer.add(task, ctx.train_data(task))

    def replayed(self, ctx: StageContext) -> Losses:
        """The old tasks' losses on a batch of buffered samples each (none without replay)."""
        if self.replay is None:
            return {}
        size = self.replay.batch_size
        return {task: ctx.loss(task, *self.buffer.sample(task, size)) for task in ctx.old_tasks}

    def losses(self, ctx: StageContext, images: Tensor, targets: Targets) -> Losses:
        """Loss components per term for one training batch of the new task (and the replayed
        old tasks' terms)."""
        return {ctx.task: ctx.loss(ctx.task, images, targets)} | self.replayed(ctx)

    def term_weight(self, ctx: StageContext, term: str) -> float:
        """The factor of a term in the default update: λ for a replayed old task, else 1."""
        if self.replay is not None and term in ctx.old_tasks:
            return self.replay.weight
        return 1.0

    def backward(self, ctx: StageContext, losses: Losses) -> None:
        """Accumulate the gradients of the update (default: of Σ term_weight · term)."""
        weighted = [self.term_weight(ctx, name) * total(parts) for name, parts in losses.items()]
        torch.stack(weighted).sum().backward()

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

    def resume_state(self) -> dict[str, Any]:
        """What a stage changes in the strategy step by step and `before_stage` does not rebuild
        (`seqmtl.resume`): the replay buffer's generator and the values of `parameters()`;
        subclasses with more such state add theirs."""
        return {
            "buffer": None if self.replay is None else self.buffer.generator.get_state(),
            "parameters": [p.detach().cpu().clone() for p in self.parameters()],
        }

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what `resume_state` saved, after `before_stage`."""
        if state["buffer"] is not None:
            self.buffer.generator.set_state(state["buffer"])
        with torch.no_grad():
            for parameter, saved in zip(self.parameters(), state["parameters"], strict=True):
                parameter.copy_(saved)


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


def build_strategy(
    section: config.Strategy, replay_buffer: config.ReplayBuffer | None = None
) -> Strategy:
    """The strategy `section.name` with its params `section.options`, and `replay_buffer` where
    it replays (always, or `replay: true` among its options); an unknown strategy, an unknown
    or bad option, or a replaying strategy without `replay_buffer`, raises a ValueError.

    Only its own module is imported, so a stage depends on the code of the strategy it runs."""
    name, options = section.name, dict(section.options)
    if name not in strategy_names():
        known = ", ".join(strategy_names())
        raise ValueError(f"strategy.name: unknown strategy {name!r}; known: {known}")
    importlib.import_module(f"seqmtl.strategies.{name}")
    cls = STRATEGIES[name]
    if "replay" in options and cls.replays is not None:
        raise ValueError(f"strategy.replay: {name} {'always' if cls.replays else 'never'} replays")
    replay = cls.replays if cls.replays is not None else options.pop("replay", False)
    if replay not in (True, False):
        raise ValueError(f"strategy.replay must be true or false, got {replay!r}")
    if replay and replay_buffer is None:
        raise ValueError(f"{name} replays: it needs the replay_buffer section")
    strategy = cls(options, replay_buffer if replay else None)
    unknown = sorted(set(options) - strategy.read)
    if unknown:
        raise ValueError(f"strategy.{unknown[0]}: not a param of {name}")
    return strategy
