"""A strategy: how a stage turns batches of the new task into a parameter update, composed of parts.

A strategy is params.yaml's `strategy` section (presets: conf/strategy/<name>.yaml), three parts:
- `terms`: any number of loss terms added to the new task's loss, applied in the order listed
  (`seqmtl.strategies.terms`, one module each: replay, derpp, ewc, lwf, cumulative, l2sp);
- `rule`: exactly one gradient rule turning the losses into the update's gradient and stepping
  with the model's update (`seqmtl.strategies.rules`: sum, gradnorm, pcgrad, uncertainty);
- the model policy: which parts are frozen from which stage, one shared trunk or one per task
  (`seqmtl.strategies.policy`).

A stage calls, in this order: `load_model` once (the model the stage trains, with the previous
stage's weights), `before_stage(ctx)` once, then for every step `losses(ctx, images, targets)`,
`backward(ctx, losses)` (the loop zeroes the gradients before), the optimiser's step and
`after_step()`, then `after_stage(ctx)` once. `state_dict()` is saved with the stage's checkpoint
and given back through `load_state_dict` to the next stage's strategy of the same name;
`resume_state()` is saved with a stage's resume state and given back through
`load_resume_state` after `before_stage` when a stopped stage resumes.
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
from seqmtl.data.datasets import TaskDataset
from seqmtl.strategies.buffer import ReplayBuffer
from seqmtl.tasks.registry import Targets, Task

Losses = dict[str, dict[str, Tensor]]
"""Loss components per term for one step, e.g. {"det": {"det_cls": …}, "seg": {"ce": …}}.
Keys are task names (the new task's loss, an old task's replayed or cumulative loss), or a
term's own name (an "ewc" penalty, an "lwf" distillation)."""

NAIVE = config.Strategy("naive", {}, {"name": "sum"}, {}, "shared")
"""Plain fine-tuning: stage 1 and the single-task references train with it."""


@dataclass
class StageContext:
    """What a strategy may use: the model, the tasks, the one being learned, their data, and the
    replay buffer where a term uses one."""

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
    buffer: ReplayBuffer | None = None

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


class Part:
    """A part of a strategy: its params (`options`, named `strategy.<key>.…` in errors) and the
    stage's hooks, each doing nothing unless a part overrides it."""

    name = "part"

    def __init__(
        self, options: dict[str, Any], key: str, replay: config.ReplayBuffer | None
    ) -> None:
        self.options, self.key, self.replay = options, key, replay
        self.read: set[str] = set()

    def number(
        self, key: str, low: float = 0.0, high: float = math.inf, *, open_low: bool = False
    ) -> float:
        """`options[key]` as a float in [low, high] ((low, high] with `open_low`); anything else
        raises a ValueError naming the param."""
        self.read.add(key)
        value = self.options.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and (low < value if open_low else low <= value) and value <= high):
            bound = f"{'>' if open_low else '≥'} {low:g}"
            if high < math.inf:
                bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
            raise ValueError(f"{self.key}.{key} must be a number {bound}, got {value!r}")
        return float(value)

    def before_stage(self, ctx: StageContext) -> None:
        """Prepare for the stage (frozen copies, Fisher information of old tasks, …)."""

    def after_stage(self, ctx: StageContext) -> None:
        """Finish the stage (Fisher information of the new task, …)."""

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the part, optimised with the model's."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """State carried to the next stage."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved at the end of the previous stage."""

    def resume_state(self) -> dict[str, Any]:
        """What the part changes step by step and `before_stage` does not rebuild."""
        return {}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what `resume_state` saved, after `before_stage`."""


class Term(Part):
    """A loss term: `losses` adds its entries to the step's, each weighted by `weight` under the
    sum rule. `outputs` holds the model's outputs on the new images: the new task's, and every
    old task's where a term `distils`."""

    uses_buffer = False  # draws on the replay buffer (ctx.buffer)
    adds_tasks = False  # its entries are old tasks' losses, keyed by task
    distils = False  # needs the old tasks' outputs on the new images
    weight = 1.0

    def losses(self, ctx: StageContext, images: Tensor, outputs: dict[str, Tensor]) -> Losses:
        raise NotImplementedError


class Rule(Part):
    """A gradient rule: `backward` accumulates the update's gradient from the step's losses (the
    task losses, keyed by task, and the terms' own entries) and their `weights`; `step` moves
    the rule's own state once the model's optimiser has stepped."""

    def backward(self, ctx: StageContext, losses: Losses, weights: dict[str, float]) -> None:
        raise NotImplementedError

    def step(self) -> None:
        """After the model's update (default: nothing)."""

    def parameters_lr(self, stage_lr: float) -> float:
        """The learning rate of `parameters()` (their own param group; default: the stage's)."""
        return stage_lr


def split(losses: Losses, ctx: StageContext) -> tuple[list[str], list[str]]:
    """The keys of `losses` that are tasks' losses, and those of the terms' own entries
    (penalties, distillations)."""
    tasks = {ctx.task, *ctx.old_tasks}
    return [k for k in losses if k in tasks], [k for k in losses if k not in tasks]


def regularisation(losses: Losses, weights: dict[str, float], keys: list[str]) -> Tensor | None:
    """Σ weight·term over `keys` (None when there are none)."""
    if not keys:
        return None
    return torch.stack([weights[k] * total(losses[k]) for k in keys]).sum()


PARTS: dict[str, dict[str, type[Part]]] = {"terms": {}, "rule": {}}


def register(name: str) -> Callable[[type[Part]], type[Part]]:
    """Class decorator adding a term or rule to its registry under `name` (also its `name`)."""

    def add(cls: type[Part]) -> type[Part]:
        kind = "terms" if issubclass(cls, Term) else "rule"
        cls.name = name
        PARTS[kind][name] = cls
        return cls

    return add


def part_names(kind: str) -> list[str]:
    """Every term ("terms") or rule ("rule"): the modules of its package, each named as its part."""
    package = importlib.import_module(f"seqmtl.strategies.{'rules' if kind == 'rule' else kind}")
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__))


def part_class(kind: str, name: str) -> type[Part]:
    """The term or rule `name` of `kind`, its module imported (only its own); an unknown one
    raises a ValueError naming it and the known ones."""
    if name not in part_names(kind):
        known = ", ".join(part_names(kind))
        key = "strategy.rule.name" if kind == "rule" else f"strategy.terms.{name}"
        raise ValueError(f"{key}: unknown {kind.removesuffix('s')} {name!r}; known: {known}")
    importlib.import_module(f"seqmtl.strategies.{'rules' if kind == 'rule' else kind}.{name}")
    return PARTS[kind][name]


def build_part(cls: type[Part], key: str, options: Any, replay: config.ReplayBuffer | None) -> Part:
    """`cls` with `options` (its params, named `key`.… in errors); an unknown or bad param raises
    a ValueError naming it."""
    if not isinstance(options, dict):
        raise ValueError(f"{key} must be a mapping of its params, got {options!r}")
    part = cls(options, key, replay)
    unknown = sorted(set(options) - part.read)
    if unknown:
        raise ValueError(f"{key}.{unknown[0]}: not a param of {cls.name}")
    return part


class Strategy:
    """The composition of `terms`, one `rule` and a model `policy`.

    L = Σ_k weight_k · L_k over the new task's loss (weight 1) and every term's entries under the
    sum rule; the other rules weigh or combine the task losses their own way and add the terms'
    own entries at their weights."""

    def __init__(
        self,
        name: str,
        terms: list[Term],
        rule: Rule,
        policy: Any,
        replay: config.ReplayBuffer | None,
    ) -> None:
        self.name, self.terms, self.rule, self.policy = name, terms, rule, policy
        self.replay = replay
        self.parts: list[Part] = [policy, *terms, rule]

    def load_model(
        self,
        make_model: Callable[[], nn.Module],
        checkpoint: dict[str, Any] | None,
        tasks: list[str],
    ) -> nn.Module:
        """The model that serves `tasks` (`policy.load_model`)."""
        return self.policy.load_model(make_model, checkpoint, tasks)

    def before_stage(self, ctx: StageContext) -> None:
        """The replay buffer (where a term draws on it), then every part's `before_stage`."""
        if self.replay is not None and any(t.uses_buffer for t in self.terms):
            ctx.buffer = ReplayBuffer(self.replay.per_task, ctx.seed)
            for task in ctx.old_tasks:
                ctx.buffer.add(task, ctx.train_data(task))
        self.buffer = ctx.buffer
        for part in self.parts:
            part.before_stage(ctx)

    def losses(self, ctx: StageContext, images: Tensor, targets: Targets) -> Losses:
        """The new task's loss components on a training batch, then each term's entries."""
        heads = None if any(t.distils for t in self.terms) else (ctx.task,)
        outputs = ctx.model(images.to(ctx.device), tasks=heads)
        losses = {ctx.task: ctx.tasks[ctx.task].loss(outputs, targets, images.shape[-1])}
        self.weights = {ctx.task: 1.0}
        for term in self.terms:
            entries = term.losses(ctx, images, outputs)
            losses |= entries
            self.weights |= dict.fromkeys(entries, term.weight)
        return losses

    def backward(self, ctx: StageContext, losses: Losses) -> None:
        """Accumulate the update's gradient (the rule's)."""
        self.rule.backward(ctx, losses, self.weights)

    def after_step(self) -> None:
        """After the optimiser's step: the rule's own step."""
        self.rule.step()

    def after_stage(self, ctx: StageContext) -> None:
        for part in self.parts:
            part.after_stage(ctx)

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the strategy itself (the rule's), optimised with the model's."""
        return self.rule.parameters()

    def parameters_lr(self, stage_lr: float) -> float:
        return self.rule.parameters_lr(stage_lr)

    def state_dict(self) -> dict[str, Any]:
        """Each part's state carried to the next stage, by part name (parts with none omitted)."""
        return {p.name: state for p in self.parts if (state := p.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            if part.name in state:
                part.load_state_dict(state[part.name])

    def resume_state(self) -> dict[str, Any]:
        """The replay buffer's generator, the values of `parameters()`, and each part's own."""
        return {
            "buffer": None if self.buffer is None else self.buffer.generator.get_state(),
            "parameters": [p.detach().cpu().clone() for p in self.parameters()],
            "parts": {p.name: p.resume_state() for p in self.parts},
        }

    def load_resume_state(self, state: dict[str, Any]) -> None:
        if state["buffer"] is not None:
            self.buffer.generator.set_state(state["buffer"])
        with torch.no_grad():
            for parameter, saved in zip(self.parameters(), state["parameters"], strict=True):
                parameter.copy_(saved)
        for part in self.parts:
            part.load_resume_state(state["parts"][part.name])


def build_strategy(
    section: config.Strategy, replay_buffer: config.ReplayBuffer | None = None
) -> Strategy:
    """The strategy of a `strategy` section: its terms (in order), its rule and its model
    policy. An unknown part, an unknown or bad param, terms that cannot go together, or a term
    drawing on the replay buffer without `replay_buffer`, raises a ValueError naming it. Only the
    modules of its own parts are imported, so a stage depends on the code it runs."""
    from seqmtl.strategies.policy import Policy

    classes = {name: part_class("terms", name) for name in section.terms}
    drawing = [name for name, cls in classes.items() if cls.uses_buffer]
    if drawing and replay_buffer is None:
        raise ValueError(f"strategy.terms: {', '.join(drawing)} need the replay_buffer section")
    adding = [name for name, cls in classes.items() if cls.adds_tasks]
    if len(adding) > 1:
        raise ValueError(
            f"strategy.terms: {' and '.join(adding)} both add the old tasks' losses; keep one"
        )
    terms = [
        build_part(cls, f"strategy.terms.{name}", section.terms[name], replay_buffer)
        for name, cls in classes.items()
    ]
    rule = dict(section.rule)
    if not isinstance(rule.get("name"), str):
        raise ValueError(f"strategy.rule.name: missing (one of {', '.join(part_names('rule'))})")
    name = rule.pop("name")
    rule_part = build_part(part_class("rule", name), "strategy.rule", rule, replay_buffer)
    policy = Policy(section.freeze, section.trunk, terms)
    return Strategy(section.name, terms, rule_part, policy, replay_buffer)
