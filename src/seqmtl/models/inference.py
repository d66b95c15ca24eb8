"""The model as it is deployed: a copy for inference that computes the same outputs faster.

`for_inference(model)` returns a copy in eval mode with every BatchNorm folded into the
convolution before it (`fold_batchnorm`), whose tensors are in the channels_last memory format,
and which converts its input to it: oneDNN's CPU convolutions, the depthwise ones above all, run
faster in that layout, and a folded BatchNorm is one pass less over each activation (measured at
512 x 512, batch 1, 2 threads: see docs/benchmark.md). The outputs equal the
model's up to float rounding (tests/test_inference.py bounds it). The model itself keeps its
BatchNorm layers, which training needs.
"""

from __future__ import annotations

import copy
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class ChannelsLast(nn.Module):
    """`module` with its input converted to channels_last; other arguments pass through."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.module(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


def fold_batchnorm(model: nn.Module) -> None:
    """Fold, in place, each BatchNorm2d of the eval-mode `model` that is registered right after a
    Conv2d of as many channels in the same parent (the backbones' contract) into that convolution,
    y = (W x + b - mean) * gamma / sqrt(var + eps) + beta, leaving an Identity in its place."""
    for parent in list(model.modules()):
        for (conv_name, conv), (bn_name, bn) in pairwise(list(parent.named_children())):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.num_features == conv.out_channels
            ):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())


def for_inference(model: nn.Module) -> nn.Module:
    """An inference copy of `model` (see the module docstring); `model` is left unchanged."""
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    return ChannelsLast(fast.to(memory_format=torch.channels_last)).eval()
