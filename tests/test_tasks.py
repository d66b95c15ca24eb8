import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqmtl.tasks.metrics import IGNORE_INDEX
from seqmtl.tasks.registry import Segmentation


def test_segmentation_loss_is_the_mean_pixel_cross_entropy_on_channels_last_logits() -> None:
    """The loss on the model's channels_last stride-8 logits equals the mean over labelled pixels
    of -log softmax at the upsampled logits, computed in float64 from NCHW copies; so does its
    gradient (float64 autograd of the 4-D reference)."""
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 5, 4, 4, generator=generator)
    masks = torch.randint(0, 5, (2, 32, 32), generator=generator)
    masks[0, :7] = IGNORE_INDEX
    masks[1, :, :3] = IGNORE_INDEX
    logits = raw.contiguous(memory_format=torch.channels_last).requires_grad_()
    targets = [{"mask": m} for m in masks]
    loss = Segmentation(5).loss({"seg": logits}, targets, 32)["ce"]
    loss.backward()

    reference = raw.double().requires_grad_()
    up = F.interpolate(reference, size=(32, 32), mode="bilinear", align_corners=False)
    z = up.detach().numpy()
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    keep = masks.numpy() != IGNORE_INDEX
    b, y, x = np.nonzero(keep)
    expected = -log_p[b, masks.numpy()[keep], y, x].mean()
    # Tolerances about 5x and 8x the largest float32 deviations over 50 seeds at 1 and 2 threads
    # (4.2e-7 for the loss, 0.12 of the gradient bound).
    assert abs(loss.item() - expected) < 2e-6
    F.cross_entropy(up, masks, ignore_index=IGNORE_INDEX).backward()
    assert torch.allclose(logits.grad.double(), reference.grad, atol=1e-8, rtol=1e-5)


def test_segmentation_loss_at_a_stride_scores_the_pixel_nearest_each_block_centre() -> None:
    """With `loss_stride` k the loss is the mean cross-entropy, over the labelled pixels
    (k // 2 + k i, k // 2 + k j), of the logits upsampled to S / k: a float64 reference built
    from an explicit loop over the kept pixels."""
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(2, 5, 4, 4, generator=generator)
    masks = torch.randint(0, 5, (2, 32, 32), generator=generator)
    masks[0, 5:20, 3:9] = IGNORE_INDEX
    targets = [{"mask": m} for m in masks]
    for k in (2, 4):
        logits = raw.contiguous(memory_format=torch.channels_last)
        loss = Segmentation(5, loss_stride=k).loss({"seg": logits}, targets, 32)["ce"].item()
        up = F.interpolate(raw.double(), size=(32 // k, 32 // k), mode="bilinear")
        log_p = torch.log_softmax(up, 1)
        terms = [
            -log_p[b, int(masks[b, k // 2 + k * i, k // 2 + k * j]), i, j].item()
            for b in range(2)
            for i in range(32 // k)
            for j in range(32 // k)
            if masks[b, k // 2 + k * i, k // 2 + k * j] != IGNORE_INDEX
        ]
        assert len(terms) < 2 * (32 // k) ** 2  # the ignored block removed some pixels
        assert abs(loss - float(np.mean(terms))) < 2e-6


@pytest.mark.parametrize("stride", [0, -2, 1.5, True])
def test_a_bad_segmentation_loss_stride_is_named(stride: object) -> None:
    with pytest.raises(ValueError, match=r"train\.seg_loss_stride must be a positive integer"):
        Segmentation(5, loss_stride=stride)
