"""Anchor-free detection over a feature pyramid (FCOS, Tian et al. 2019), one head for every level.

Per location of each level (P3, P4, P5 at strides 8, 16, 32) the head emits 4 box distances (left,
top, right, bottom, as softplus(x) x the level's stride), 1 centerness logit and C class logits;
the levels' locations are concatenated, P3 first, row-major within a level (`pyramid_points`).

A location is a candidate for a box when it lies inside the box, within `radius` of its level's
strides of the box's centre along each axis, and the largest of its four distances to the box's
sides lies in its level's scale range (`Level`); among several boxes it takes the smallest. A box
left without a location takes the free location of its own level nearest its centre (a fallback:
see `assign`). Losses: sigmoid focal loss on the classes (normalised by the positives), GIoU loss
on the boxes weighted by the centerness target (1 at a fallback), and BCE on the centerness of the
positives inside their boxes (a fallback lies outside, where the centerness formula says 0:
training it there would teach the branch to suppress exactly the small objects). Scores at
decoding are sqrt(sigmoid(class) x sigmoid(centerness)); NMS runs over all levels together.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss


@dataclass(frozen=True)
class Level:
    """A pyramid level: its stride, and the scale range (low, high] of the largest distance from
    one of its locations to the sides of a box that the location may regress."""

    stride: int
    low: float
    high: float


# FCOS's ranges for P3-P5 (its P6 and P7 ranges folded into P5: the images here are <= 512 px).
PYRAMID = (Level(8, 0.0, 64.0), Level(16, 64.0, 128.0), Level(32, 128.0, math.inf))


@dataclass(frozen=True)
class Points:
    """Every location of a pyramid: xy centres (N, 2) in input pixels, and per location its
    level's stride and scale range (N,)."""

    xy: Tensor
    stride: Tensor
    low: Tensor
    high: Tensor

    def __len__(self) -> int:
        return len(self.xy)


def locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """(H*W, 2) xy centres of the map's cells in input pixels, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride


@functools.lru_cache(maxsize=16)
def pyramid_points(size: int, device: torch.device, levels: tuple[Level, ...] = PYRAMID) -> Points:
    """The locations of an S x S input's levels (S a multiple of every stride), in output order;
    built once per (size, device, levels) and shared: read them, never write them."""
    xy = [locations(size // lv.stride, size // lv.stride, lv.stride, device) for lv in levels]
    per_level = [torch.ones(len(p), device=device) for p in xy]
    return Points(
        torch.cat(xy),
        torch.cat([n * lv.stride for n, lv in zip(per_level, levels, strict=True)]),
        torch.cat([n * lv.low for n, lv in zip(per_level, levels, strict=True)]),
        torch.cat([n * lv.high for n, lv in zip(per_level, levels, strict=True)]),
    )


def decode_boxes(distances: Tensor, xy: Tensor, stride: Tensor) -> Tensor:
    """(…, N, 4) raw distance outputs -> xyxy boxes around the (N, 2) points of strides (N,)."""
    ltrb = F.softplus(distances) * stride[:, None]
    return torch.cat([xy - ltrb[..., :2], xy + ltrb[..., 2:]], -1)


def assign(points: Points, boxes: Tensor, radius: float = 1.5) -> tuple[Tensor, Tensor, Tensor]:
    """Index of the box each point regresses (-1 = background), the positive mask, and the mask
    of fallback positives (points outside the box they regress).

    A point is a candidate for a box when it lies inside it, within `radius` x its stride of the
    box's centre along each axis, and max(l, t, r, b), its distances to the box's sides, lies in
    its level's range; among several candidate boxes it takes the smallest. Every box gets at
    least one positive: a box left without one (too small to hold a point, or outbid by smaller
    boxes) takes the free point nearest its centre on the level whose range holds its half-side
    (any level where that one has none free), smallest boxes first."""
    n = len(points)
    index = torch.full((n,), -1, dtype=torch.long, device=points.xy.device)
    if len(boxes) == 0:
        none = torch.zeros(n, dtype=torch.bool, device=points.xy.device)
        return index, none, none
    xy = points.xy[:, None]
    ltrb = torch.cat([xy - boxes[None, :, :2], boxes[None, :, 2:] - xy], -1)
    inside = ltrb.min(-1).values > 0
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    near = ((xy - centre[None]).abs() <= radius * points.stride[:, None, None]).all(-1)
    reach = ltrb.max(-1).values
    in_range = (reach > points.low[:, None]) & (reach <= points.high[:, None])
    candidate = inside & near & in_range
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inf = torch.tensor(math.inf, device=boxes.device)
    best_area, best = torch.where(candidate, area.expand(n, -1), inf).min(1)
    positive = torch.isfinite(best_area)
    index[positive] = best[positive]
    covered = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    covered[index[positive]] = True
    distance = ((xy - centre[None]) ** 2).sum(-1)
    half = ((boxes[:, 2:] - boxes[:, :2]) / 2).max(-1).values
    own_level = (half[None] > points.low[:, None]) & (half[None] <= points.high[:, None])
    for b in sorted(torch.nonzero(~covered).flatten().tolist(), key=lambda b: area[b].item()):
        free = torch.where(positive, inf, distance[:, b])
        on_level = torch.where(own_level[:, b], free, inf)
        point = int(on_level.argmin() if torch.isfinite(on_level).any() else free.argmin())
        index[point], positive[point] = b, True
    fallback = positive & ~inside[torch.arange(n, device=boxes.device), index.clamp(min=0)]
    return index, positive, fallback


def centerness(xy: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of points in their boxes."""
    ltrb = torch.cat([xy - boxes[:, :2], boxes[:, 2:] - xy], -1).clamp(min=1e-6)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt(
        (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    )


def detection_loss(
    raw: Tensor,
    targets: list[dict[str, Tensor]],
    points: Points,
    num_classes: int,
    radius: float = 1.5,
) -> dict[str, Tensor]:
    """Focal class loss, GIoU box loss and centerness BCE for raw (B, N, 5 + C) outputs at
    `points`, positives as `assign`."""
    cls_targets, box_targets, pred_boxes, ctr_logits, ctr_targets, fallbacks = (
        [] for _ in range(6)
    )
    for out, target in zip(raw, targets, strict=True):
        index, positive, fallback = assign(points, target["boxes"], radius)
        one_hot = torch.zeros(len(points), num_classes, device=raw.device)
        one_hot[positive, target["labels"][index[positive]]] = 1.0
        cls_targets.append(one_hot)
        boxes = target["boxes"][index[positive]]
        box_targets.append(boxes)
        xy = points.xy[positive]
        pred_boxes.append(decode_boxes(out[positive, :4], xy, points.stride[positive]))
        ctr_logits.append(out[positive, 4])
        ctr_targets.append(centerness(xy, boxes))
        fallbacks.append(fallback[positive])
    num_pos = max(sum(len(b) for b in box_targets), 1)
    cls_loss = sigmoid_focal_loss(raw[..., 5:], torch.stack(cls_targets), reduction="sum") / num_pos
    ctr_target, fallback = torch.cat(ctr_targets), torch.cat(fallbacks)
    zero = raw.sum() * 0.0
    if len(ctr_target) == 0:
        return {"det_cls": cls_loss, "det_box": zero, "det_ctr": zero}
    weight = torch.where(fallback, torch.ones_like(ctr_target), ctr_target)
    giou = generalized_box_iou_loss(torch.cat(pred_boxes), torch.cat(box_targets), reduction="none")
    box_loss = (giou * weight).sum() / weight.sum().clamp(min=1e-6)
    regular = ~fallback
    ctr_loss = (
        F.binary_cross_entropy_with_logits(torch.cat(ctr_logits)[regular], ctr_target[regular])
        if regular.any()
        else zero
    )
    return {"det_cls": cls_loss, "det_box": box_loss, "det_ctr": ctr_loss}


@torch.no_grad()
def decode(
    raw: Tensor,
    points: Points,
    image_size: int,
    score_threshold: float,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms: int = 1000,
) -> list[dict[str, Tensor]]:
    """Per image: xyxy boxes (input pixels), scores and labels after threshold and batched NMS,
    over the locations of every level together."""
    results = []
    for out in raw:
        scores = torch.sqrt(torch.sigmoid(out[:, 5:]) * torch.sigmoid(out[:, 4:5])).flatten()
        keep = torch.nonzero(scores > score_threshold).squeeze(1)
        keep = keep[scores[keep].topk(min(pre_nms, len(keep))).indices]
        num_classes = out.shape[1] - 5
        location, labels = keep // num_classes, keep % num_classes
        boxes = decode_boxes(out[location, :4], points.xy[location], points.stride[location])
        boxes = boxes.clamp(0, image_size)
        kept = batched_nms(boxes, scores[keep], labels, nms_iou)[:max_detections]
        results.append({"boxes": boxes[kept], "scores": scores[keep][kept], "labels": labels[kept]})
    return results
