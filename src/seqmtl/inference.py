"""The model as it is deployed: a copy for inference that computes the same outputs faster.

`for_inference(model)` returns a copy in eval mode whose tensors are in the channels_last memory
format, and which converts its input to it: oneDNN's CPU convolutions, the depthwise ones above
all, run faster in that layout (measured at 512 x 512, batch 1, 2 threads: see the README,
"Benchmark"). BatchNorm folded into the convolutions was measured too and did not pay, so it is
not done. The outputs equal the model's up to float rounding (tests/test_inference.py bounds it).
Training keeps the default layout, so that its results stay what they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class ChannelsLast(nn.Module):
    """`module` with its input converted to channels_last; other arguments pass through."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.module(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


def for_inference(model: nn.Module) -> nn.Module:
    """An inference copy of `model` (see the module docstring); `model` is left unchanged."""
    return ChannelsLast(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
