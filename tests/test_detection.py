"""FCOS detection: assignment, losses on known cases, decoding with threshold and NMS."""

from __future__ import annotations

import math

import torch

from seqmtl.detection import assign, centerness, decode, decode_boxes, detection_loss, locations

STRIDE = 8


def encode(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Raw distance outputs that decode to `boxes` around `points` (softplus inverted)."""
    ltrb = torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], -1) / STRIDE
    return ltrb + torch.log(-torch.expm1(-ltrb))


def test_locations_are_cell_centres() -> None:
    points = locations(2, 3, STRIDE, torch.device("cpu"))
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_assign_centre_sampling_and_smallest_box() -> None:
    points = locations(8, 8, STRIDE, torch.device("cpu"))
    big = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    small = torch.tensor([[20.0, 20.0, 36.0, 36.0]])
    index, positive, _ = assign(points, torch.cat([big, small]), STRIDE, radius=1.5, central=0.0)
    # locations within 1.5 strides of the big box's centre (32, 32): x, y in {20, 28, 36, 44}
    centre_points = ((points - 32).abs() <= 12).all(1)
    assert torch.equal(positive, centre_points)
    # inside the small box (and near its centre) the smaller box wins
    in_small = ((points > 20) & (points < 36)).all(1)
    assert (index[in_small] == 1).all() and (index[centre_points & ~in_small] == 0).all()


def test_a_large_box_takes_its_central_part() -> None:
    points = locations(16, 16, STRIDE, torch.device("cpu"))
    box = torch.tensor([[0.0, 0.0, 128.0, 96.0]])  # centre (64, 48), half-sides 64 and 48
    _, positive, _ = assign(points, box, STRIDE, radius=1.5, central=0.5)
    # within 32 px of 64 along x and 24 px of 48 along y: x in 36..92, y in 28..68
    expected = ((points[:, 0] - 64).abs() <= 32) & ((points[:, 1] - 48).abs() <= 24)
    assert torch.equal(positive, expected) and int(expected.sum()) == 8 * 6
    # a box smaller than the radius keeps the radius
    small = torch.tensor([[40.0, 40.0, 64.0, 64.0]])
    _, positive, _ = assign(points, small, STRIDE, radius=1.5, central=0.5)
    assert torch.equal(positive, ((points - 52).abs() <= 12).all(1))


def test_tiny_box_takes_its_nearest_location_as_a_fallback() -> None:
    points = locations(4, 4, STRIDE, torch.device("cpu"))
    index, positive, fallback = assign(
        points, torch.tensor([[13.0, 13.0, 15.0, 15.0]]), STRIDE, 1.5
    )
    assert positive.sum() == 1 and points[positive].tolist() == [[12.0, 12.0]]
    assert index[positive].tolist() == [0] and torch.equal(fallback, positive)


def test_boxes_sharing_a_nearest_location_each_get_one() -> None:
    points = locations(4, 4, STRIDE, torch.device("cpu"))
    # two tiny boxes whose nearest location is (12, 12); the smaller one keeps it
    boxes = torch.tensor([[13.0, 13.0, 15.0, 15.0], [13.0, 13.0, 14.0, 14.0]])
    index, positive, fallback = assign(points, boxes, STRIDE, 1.5)
    assert sorted(index[positive].tolist()) == [0, 1] and torch.equal(fallback, positive)
    assert index[(points == 12.0).all(1)].tolist() == [1]


def test_fallbacks_are_left_out_of_the_centerness_loss() -> None:
    points = locations(4, 4, STRIDE, torch.device("cpu"))
    tiny = {"boxes": torch.tensor([[13.0, 13.0, 15.0, 15.0]]), "labels": torch.tensor([0])}
    raw = torch.zeros(1, 16, 6, requires_grad=True)
    losses = detection_loss(raw, [tiny], points, STRIDE, 1)
    assert losses["det_ctr"] == 0 and losses["det_box"] > 0
    sum(losses.values()).backward()
    assert raw.grad[0, :, 4].abs().sum() == 0  # no centerness gradient anywhere


def test_no_boxes_means_all_background() -> None:
    points = locations(4, 4, STRIDE, torch.device("cpu"))
    index, positive, fallback = assign(points, torch.zeros(0, 4), STRIDE, 1.5)
    assert not positive.any() and not fallback.any() and (index == -1).all()


def perfect_outputs(points: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                    num_classes: int) -> torch.Tensor:  # fmt: skip
    """Raw (1, N, 5 + C) outputs: exact boxes and confident classes at the positives."""
    index, positive, _ = assign(points, boxes, STRIDE, 1.5)
    raw = torch.full((len(points), 5 + num_classes), -20.0)
    raw[:, 4] = 0.0
    raw[positive, :4] = encode(points[positive], boxes[index[positive]])
    raw[positive, 5 + labels[index[positive]]] = 20.0
    return raw[None]


def test_losses_vanish_for_a_perfect_prediction() -> None:
    points = locations(8, 8, STRIDE, torch.device("cpu"))
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 28.0, 60.0, 50.0]])
    labels = torch.tensor([2, 0])
    raw = perfect_outputs(points, boxes, labels, 3)
    losses = detection_loss(raw, [{"boxes": boxes, "labels": labels}], points, STRIDE, 3)
    assert losses["det_cls"] < 1e-6 and losses["det_box"] < 1e-5
    # centerness BCE is at its minimum when the logit matches the target
    index, positive, _ = assign(points, boxes, STRIDE, 1.5)
    target = centerness(points[positive], boxes[index[positive]])
    raw[0, positive, 4] = torch.logit(target)
    best = detection_loss(raw, [{"boxes": boxes, "labels": labels}], points, STRIDE, 3)
    entropy = -(target * target.log() + (1 - target) * (1 - target).log()).mean()
    torch.testing.assert_close(best["det_ctr"], entropy)


def test_box_loss_grows_with_the_error() -> None:
    points = locations(8, 8, STRIDE, torch.device("cpu"))
    boxes, labels = torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([1])
    targets = [{"boxes": boxes, "labels": labels}]
    raw = perfect_outputs(points, boxes, labels, 2)
    losses = []
    for shift in (0.0, 0.5, 1.0):
        moved = raw.clone()
        moved[..., :4] += shift
        losses.append(detection_loss(moved, targets, points, STRIDE, 2)["det_box"].item())
    assert losses[0] < losses[1] < losses[2]


def test_empty_image_gives_finite_losses() -> None:
    points = locations(4, 4, STRIDE, torch.device("cpu"))
    raw = torch.randn(1, 16, 7, requires_grad=True)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detection_loss(raw, targets, points, STRIDE, 2)
    assert losses["det_box"] == 0 and torch.isfinite(losses["det_cls"])
    sum(losses.values()).backward()
    assert raw.grad is not None


def test_decode_inverts_the_encoding_and_applies_nms() -> None:
    points = locations(8, 8, STRIDE, torch.device("cpu"))
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    raw = torch.full((1, 64, 5 + 2), -20.0)
    for k in (27, 28):  # two neighbouring locations predicting the same box and class
        raw[0, k, :4] = encode(points[k : k + 1], box)[0]
        raw[0, k, 4] = 20.0
        raw[0, k, 5] = 3.0 if k == 27 else 2.0
    raw[0, 36, :4] = encode(points[36:37], box)[0]  # the same box, the other class
    raw[0, 36, 4], raw[0, 36, 6] = 20.0, 1.0
    (result,) = decode(raw, points, STRIDE, 64, score_threshold=0.05)
    assert result["labels"].tolist() == [0, 1]
    torch.testing.assert_close(result["boxes"], box.expand(2, 4), atol=1e-3, rtol=0)
    expected = [math.sqrt(1 / (1 + math.exp(-s))) for s in (3.0, 1.0)]
    torch.testing.assert_close(result["scores"], torch.tensor(expected), atol=1e-4, rtol=0)
    (strict,) = decode(raw, points, STRIDE, 64, score_threshold=0.9)
    assert strict["labels"].tolist() == [0]


def test_decoded_boxes_are_clipped_to_the_image() -> None:
    points = torch.tensor([[4.0, 4.0]])
    boxes = decode_boxes(torch.full((1, 4), 10.0), points, STRIDE)
    assert boxes[0, 0] < 0
    raw = torch.cat([torch.full((1, 1, 4), 10.0), torch.full((1, 1, 2), 20.0)], -1)
    (result,) = decode(raw, points, STRIDE, 32, score_threshold=0.5)
    assert result["boxes"].min() >= 0 and result["boxes"].max() <= 32
