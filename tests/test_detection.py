"""FCOS detection: assignment over levels, losses on known cases, decoding with NMS."""

from __future__ import annotations

import math

import torch

from seqmtl.tasks.detection import (
    PYRAMID,
    Level,
    Points,
    assign,
    centerness,
    decode,
    decode_boxes,
    detection_loss,
    locations,
    pyramid_points,
)

STRIDE = 8
ONE_LEVEL = (Level(STRIDE, 0.0, math.inf),)
CPU = torch.device("cpu")


def grid(side: int) -> Points:
    """The locations of one stride-8 level, side x side, taking boxes of every scale."""
    return pyramid_points(side * STRIDE, CPU, ONE_LEVEL)


def encode(points: Points, index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Raw distance outputs at points[index] that decode to `boxes` (softplus inverted)."""
    xy, stride = points.xy[index], points.stride[index, None]
    ltrb = torch.cat([xy - boxes[:, :2], boxes[:, 2:] - xy], -1) / stride
    return ltrb + torch.log(-torch.expm1(-ltrb))


def test_locations_are_cell_centres() -> None:
    points = locations(2, 3, STRIDE, torch.device("cpu"))
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_assign_centre_sampling_and_smallest_box() -> None:
    points = grid(8)
    big = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    small = torch.tensor([[20.0, 20.0, 36.0, 36.0]])
    index, positive, _ = assign(points, torch.cat([big, small]), radius=1.5)
    # locations within 1.5 strides of the big box's centre (32, 32): x, y in {20, 28, 36, 44}
    centre_points = ((points.xy - 32).abs() <= 12).all(1)
    assert torch.equal(positive, centre_points)
    # inside the small box (and near its centre) the smaller box wins
    in_small = ((points.xy > 20) & (points.xy < 36)).all(1)
    assert (index[in_small] == 1).all() and (index[centre_points & ~in_small] == 0).all()


def test_each_box_goes_to_the_level_of_its_scale() -> None:
    """FCOS's ranges: a location takes a box when max(l, t, r, b) is in its level's range."""
    points = pyramid_points(256, CPU)
    level = torch.cat([torch.full(((256 // lv.stride) ** 2,), i) for i, lv in enumerate(PYRAMID)])
    boxes = torch.tensor(
        [[100.0, 100.0, 140.0, 140.0],  # half-side 20: P3
         [60.0, 60.0, 220.0, 180.0],  # half-sides 80 x 60: P4
         [0.0, 0.0, 256.0, 256.0]]  # half-side 128: every point near the centre reaches > 128
    )  # fmt: skip
    index, positive, fallback = assign(points, boxes)
    assert not fallback.any()
    assert set(level[positive & (index == 0)].tolist()) == {0}
    assert set(level[positive & (index == 1)].tolist()) == {1}
    assert set(level[positive & (index == 2)].tolist()) == {2}
    reach = torch.cat([points.xy - boxes[index.clamp(min=0), :2],
                       boxes[index.clamp(min=0), 2:] - points.xy], -1).amax(-1)  # fmt: skip
    assert (reach[positive] > points.low[positive]).all()
    assert (reach[positive] <= points.high[positive]).all()
    # within 1.5 of their level's strides of the centre
    centre = (boxes[index[positive], :2] + boxes[index[positive], 2:]) / 2
    assert ((points.xy[positive] - centre).abs() <= 1.5 * points.stride[positive, None]).all()


def test_pyramid_points_are_the_levels_cell_centres_in_order() -> None:
    points = pyramid_points(64, CPU)
    assert len(points) == 64 + 16 + 4
    assert points.xy[:2].tolist() == [[4.0, 4.0], [12.0, 4.0]]
    assert points.xy[64:66].tolist() == [[8.0, 8.0], [24.0, 8.0]]
    assert points.xy[80:].tolist() == [[16.0, 16.0], [48.0, 16.0], [16.0, 48.0], [48.0, 48.0]]
    assert points.stride.unique().tolist() == [8, 16, 32]


def test_tiny_box_takes_its_nearest_location_as_a_fallback() -> None:
    points = pyramid_points(32, CPU)  # P3 4 x 4, P4 2 x 2, P5 1 x 1
    index, positive, fallback = assign(points, torch.tensor([[13.0, 13.0, 15.0, 15.0]]))
    # its own level (P3) holds the nearest point: P4's (8, 8) is farther
    assert positive.sum() == 1 and points.xy[positive].tolist() == [[12.0, 12.0]]
    assert index[positive].tolist() == [0] and torch.equal(fallback, positive)


def test_boxes_sharing_a_nearest_location_each_get_one() -> None:
    points = grid(4)
    # two tiny boxes whose nearest location is (12, 12); the smaller one keeps it
    boxes = torch.tensor([[13.0, 13.0, 15.0, 15.0], [13.0, 13.0, 14.0, 14.0]])
    index, positive, fallback = assign(points, boxes)
    assert sorted(index[positive].tolist()) == [0, 1] and torch.equal(fallback, positive)
    assert index[(points.xy == 12.0).all(1)].tolist() == [1]


def test_fallbacks_are_left_out_of_the_centerness_loss() -> None:
    points = grid(4)
    tiny = {"boxes": torch.tensor([[13.0, 13.0, 15.0, 15.0]]), "labels": torch.tensor([0])}
    raw = torch.zeros(1, 16, 6, requires_grad=True)
    losses = detection_loss(raw, [tiny], points, 1)
    assert losses["det_ctr"] == 0 and losses["det_box"] > 0
    sum(losses.values()).backward()
    assert raw.grad[0, :, 4].abs().sum() == 0  # no centerness gradient anywhere


def test_no_boxes_means_all_background() -> None:
    index, positive, fallback = assign(grid(4), torch.zeros(0, 4))
    assert not positive.any() and not fallback.any() and (index == -1).all()


def perfect_outputs(points: Points, boxes: torch.Tensor, labels: torch.Tensor,
                    num_classes: int) -> torch.Tensor:  # fmt: skip
    """Raw (1, N, 5 + C) outputs: exact boxes and confident classes at the positives."""
    index, positive, _ = assign(points, boxes)
    raw = torch.full((len(points), 5 + num_classes), -20.0)
    raw[:, 4] = 0.0
    raw[positive, :4] = encode(points, positive, boxes[index[positive]])
    raw[positive, 5 + labels[index[positive]]] = 20.0
    return raw[None]


def test_losses_vanish_for_a_perfect_prediction() -> None:
    points = pyramid_points(128, CPU)
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 28.0, 60.0, 50.0], [0, 0, 128.0, 120.0]])
    labels = torch.tensor([2, 0, 1])
    raw = perfect_outputs(points, boxes, labels, 3)
    losses = detection_loss(raw, [{"boxes": boxes, "labels": labels}], points, 3)
    assert losses["det_cls"] < 1e-6 and losses["det_box"] < 1e-5
    # centerness BCE is at its minimum when the logit matches the target
    index, positive, _ = assign(points, boxes)
    target = centerness(points.xy[positive], boxes[index[positive]])
    raw[0, positive, 4] = torch.logit(target)
    best = detection_loss(raw, [{"boxes": boxes, "labels": labels}], points, 3)
    entropy = -(target * target.log() + (1 - target) * (1 - target).log()).mean()
    torch.testing.assert_close(best["det_ctr"], entropy)


def test_box_loss_grows_with_the_error() -> None:
    points = pyramid_points(64, CPU)
    boxes, labels = torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([1])
    targets = [{"boxes": boxes, "labels": labels}]
    raw = perfect_outputs(points, boxes, labels, 2)
    losses = []
    for shift in (0.0, 0.5, 1.0):
        moved = raw.clone()
        moved[..., :4] += shift
        losses.append(detection_loss(moved, targets, points, 2)["det_box"].item())
    assert losses[0] < losses[1] < losses[2]


def test_empty_image_gives_finite_losses() -> None:
    raw = torch.randn(1, 16, 7, requires_grad=True)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detection_loss(raw, targets, grid(4), 2)
    assert losses["det_box"] == 0 and torch.isfinite(losses["det_cls"])
    sum(losses.values()).backward()
    assert raw.grad is not None


def test_decode_inverts_the_encoding_and_applies_nms_over_levels() -> None:
    points = pyramid_points(64, CPU)  # P3 0-63, P4 64-79, P5 80-83
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    raw = torch.full((1, 84, 5 + 2), -20.0)
    # the same box and class from P3 (27) and from P4 (69): NMS keeps the higher score, P4's
    for k, score in ((27, 2.0), (69, 3.0)):
        raw[0, k, :4] = encode(points, torch.tensor([k]), box)[0]
        raw[0, k, 4], raw[0, k, 5] = 20.0, score
    raw[0, 80, :4] = encode(points, torch.tensor([80]), box)[0]  # the same box, the other class
    raw[0, 80, 4], raw[0, 80, 6] = 20.0, 1.0
    (result,) = decode(raw, points, 64, score_threshold=0.05)
    assert result["labels"].tolist() == [0, 1]
    torch.testing.assert_close(result["boxes"], box.expand(2, 4), atol=1e-3, rtol=0)
    expected = [math.sqrt(1 / (1 + math.exp(-s))) for s in (3.0, 1.0)]
    torch.testing.assert_close(result["scores"], torch.tensor(expected), atol=1e-4, rtol=0)
    (strict,) = decode(raw, points, 64, score_threshold=0.9)
    assert strict["labels"].tolist() == [0]


def test_box_distances_are_in_their_levels_strides() -> None:
    points = pyramid_points(64, CPU)
    ones = torch.full((len(points), 4), math.log(math.e - 1))  # softplus = 1
    boxes = decode_boxes(ones, points.xy, points.stride)
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], 2 * points.stride)


def test_decoded_boxes_are_clipped_to_the_image() -> None:
    points = Points(*(torch.tensor(v) for v in ([[4.0, 4.0]], [8.0], [0.0], [math.inf])))
    boxes = decode_boxes(torch.full((1, 4), 10.0), points.xy, points.stride)
    assert boxes[0, 0] < 0
    raw = torch.cat([torch.full((1, 1, 4), 10.0), torch.full((1, 1, 2), 20.0)], -1)
    (result,) = decode(raw, points, 32, score_threshold=0.5)
    assert result["boxes"].min() >= 0 and result["boxes"].max() <= 32
