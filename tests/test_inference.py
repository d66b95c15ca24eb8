"""The inference copy: the same outputs as the model, which is left as it was."""

from __future__ import annotations

import pytest
import torch

from seqmtl.models.backbones import BACKBONES
from seqmtl.models.inference import for_inference
from seqmtl.models.model import UnifiedModel

COUNTS = {"seg": 21, "det": 10, "cls": 10}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("size", [(96, 128), (97, 131)])
def test_outputs_equal_the_models(backbone: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = UnifiedModel(COUNTS, backbone, pretrained=backbone == "efficientnet_lite0").eval()
    fast = for_inference(model)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    # measured at 512 x 512 with the ImageNet weights: at most 1.1e-5 apart (det logits)
    for task in COUNTS:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-4)


def test_the_model_is_left_as_it_was() -> None:
    model = UnifiedModel(COUNTS, "efficientnet_lite0", pretrained=False)
    strides = [p.stride() for p in model.parameters()]
    fast = for_inference(model)
    assert model.training and not fast.training
    assert [p.stride() for p in model.parameters()] == strides
    model_storage = {p.data_ptr() for p in model.parameters()}
    assert not any(q.data_ptr() in model_storage for q in fast.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_batchnorm_is_folded_with_its_statistics(backbone: str) -> None:
    torch.manual_seed(0)
    model = UnifiedModel(COUNTS, backbone, pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    model.eval()
    fast = for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    for task in COUNTS:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-4)
