"""The one-head model: backbone -> FPN (P3, P4, P5) -> one 2-3 layer head for all tasks.

The head's last 1x1 conv emits every task's channels at once. On the FPN's levels fused at
stride 8 (P3 + P4 and P5 upsampled) forward splits them into segmentation logits
(B, C_seg, H/8, W/8) (a consumer upsamples them to the resolution it needs, once), the P3 part of
detection, and classification logits (B, C_cls) by global average pooling. The same head, the
same weights, also runs on P4 and P5, where only its detection channels are computed; detection
is (B, N, 4 + 1 + C_det) over the N locations of the three levels (`detection.pyramid_points`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from seqmtl.config import TASKS, Model
from seqmtl.models.backbones import Backbone, build_backbone
from seqmtl.tasks.registry import REGISTRY


class Trunk(nn.Module):
    """Backbone + FPN; returns the FPN levels [P3, P4, P5] (strides 8, 16, 32)."""

    def __init__(self, backbone: str, pretrained: bool, channels: int, batchnorm: str) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained, batchnorm)
        self.neck = FeaturePyramidNetwork(list(self.backbone.out_channels), channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.neck(OrderedDict(enumerate(self.backbone(x)))).values())


def fuse(levels: list[Tensor]) -> Tensor:
    """The sum of the levels, each upsampled (nearest) to the first one's size."""
    fused, *coarser = levels
    for level in coarser:
        fused = fused + F.interpolate(level, size=fused.shape[-2:], mode="nearest")
    return fused


class Head(nn.Module):
    """`layers - 1` conv3x3-SiLU blocks, then one 1x1 conv emitting all task channels.

    No normalisation layer: with GroupNorm the head needed about three times as many steps to
    leave the all-background solution on the synthetic segmentation task. SiLU rather than ReLU:
    after the detection stage a third of the ReLU head's units were dead on classification
    images, which slowed the next task's learning (measured on the synthetic default).
    """

    def __init__(self, channels: int, out_channels: int, layers: int) -> None:
        super().__init__()
        if layers not in (2, 3):
            raise ValueError(f"model.head_layers must be 2 or 3, got {layers}")
        self.hidden = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(inplace=True))
                for _ in range(layers - 1)
            ]
        )
        self.out = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, channels: slice | None = None) -> Tensor:
        """Every output channel, or only those of `channels`."""
        if channels is None:
            return self.out(self.hidden(x))
        return F.conv2d(self.hidden(x), self.out.weight[channels], self.out.bias[channels])


class UnifiedModel(nn.Module):
    """One trunk and one head for every task (`seqmtl.tasks.registry.REGISTRY`: its channels and
    output).

    Its weights and activations are in the channels_last memory format (inputs are converted):
    oneDNN's CPU convolutions, the depthwise ones above all, run faster in it, forward and
    backward (a training step at 256 px 1.52 -> 1.14 s on a 2-core AMD EPYC; docs/benchmark.md).
    """

    def __init__(
        self,
        num_classes: dict[str, int],
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        channels: int = 64,
        head_layers: int = 3,
        batchnorm: str = "frozen",
    ) -> None:
        super().__init__()
        self.num_classes = dict(num_classes)
        self.splits = {t: REGISTRY[t].channels(self.num_classes[t]) for t in TASKS}
        ends = dict(zip(self.splits, itertools.accumulate(self.splits.values()), strict=True))
        self.slices = {t: slice(ends[t] - size, ends[t]) for t, size in self.splits.items()}
        self.trunk = Trunk(backbone, pretrained, channels, batchnorm)
        self.head = Head(channels, sum(self.splits.values()), head_layers)
        with torch.no_grad():
            for task, channels_of_task in self.slices.items():
                REGISTRY[task].init_bias(self.head.out.bias[channels_of_task])
        self.to(memory_format=torch.channels_last)

    def zero_task_output(self, task: str) -> None:
        """Zero the head's output weights of `task`'s channels (their biases stay), so its first
        outputs are the prior. For a task that starts on a trunk trained for another: that
        trunk's features are far larger than a fresh one's, and random output weights on them
        start the task far from its prior, with a loss and gradient spike that rewrites the
        shared layers (see docs/pipeline.md, "Starting a new task")."""
        with torch.no_grad():
            self.head.out.weight[self.slices[task]] = 0.0

    def shared_layer(self) -> nn.Module:
        """The last layer all tasks share before their channels part (GradNorm's W)."""
        return self.head.hidden[-1][0]

    def forward(self, x: Tensor, tasks: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """Outputs of every task (one pass computes them all, so `tasks` changes nothing here;
        models with a trunk per task use it to skip the others)."""
        x = x.contiguous(memory_format=torch.channels_last)
        p3, *coarser = self.trunk(x)
        fused = self.head(fuse([p3, *coarser])).split(list(self.splits.values()), dim=1)
        outputs = {}
        for (task, own), part in zip(self.slices.items(), fused, strict=True):
            spec = REGISTRY[task]
            maps = [part] + [self.head(level, own) for level in coarser] if spec.levels else [part]
            outputs[task] = spec.output(maps)
        return outputs


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


def frozen_modules(model: nn.Module) -> list[str]:
    """The largest submodules of `model` whose parameters are all frozen (requires_grad False),
    by name ("" for the whole model)."""
    found: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            found.append(name)
            return
        for child, sub in module.named_children():
            visit(f"{name}.{child}" if name else child, sub)

    visit("", model)
    return found


def architecture(model: nn.Module, config: Model) -> dict[str, Any]:
    """What rebuilds `model` without its training strategy (`build_model`): the model params it
    was built with, its class counts, the tasks of its members where it has one trunk per task
    (None: one shared trunk), and, where a strategy froze parts of it, those parts (`frozen`)."""
    members = list(model.members) if isinstance(model, IndependentModel) else None
    keys = ("backbone", "channels", "head_layers", "batchnorm")
    frozen = frozen_modules(model)
    return (
        {"num_classes": dict(model.num_classes), "members": members}
        | {k: getattr(config, k) for k in keys}
        | ({"frozen": frozen} if frozen else {})
    )


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The model an `architecture` record describes, freshly initialised (no pretrained weights
    loaded: a checkpoint's state replaces them), its frozen parts frozen."""

    def unified() -> UnifiedModel:
        return UnifiedModel(arch["num_classes"], arch["backbone"], False, arch["channels"],
                            arch["head_layers"], arch["batchnorm"])  # fmt: skip

    if arch["members"] is None:
        model: nn.Module = unified()
    else:
        model = IndependentModel({task: unified() for task in arch["members"]})
    for name in arch.get("frozen", []):
        model.get_submodule(name).requires_grad_(False)
    return model


def shared_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """("backbone" | "neck" | "head", module) for each part that every task's output passes
    through: each `Backbone`, `FeaturePyramidNetwork` and `Head.hidden` in `model`, in model
    order (in a model with one trunk per task, each task's own)."""
    for module in model.modules():
        if isinstance(module, Backbone):
            yield "backbone", module
        elif isinstance(module, FeaturePyramidNetwork):
            yield "neck", module
        elif isinstance(module, Head):
            yield "head", module.hidden


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every `Backbone` in `model` (the pretrained part), in model order."""
    return [p for m in model.modules() if isinstance(m, Backbone) for p in m.parameters()]


def shared_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of `shared_modules` by name, in model order: all but the head's last
    conv, whose output channels are split between the tasks."""
    shared = {id(p) for _, module in shared_modules(model) for p in module.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in shared}
