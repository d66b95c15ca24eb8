"""Anchor-free single-level detection (FCOS style) on the head's stride-8 map.

Per location the head emits 4 box distances (left, top, right, bottom, as softplus(x) * stride),
1 centerness logit and C class logits. A location is positive for a box when it lies inside the box
and, along each axis, within `radius` strides or `central` times the box's half-side of its centre,
whichever is larger; among several boxes it takes the smallest; a box left
without a location takes the free one nearest its centre (a fallback: see `assign`). Losses:
sigmoid focal loss on the classes (normalised by the positives), GIoU loss on the boxes weighted
by the centerness target (1 at a fallback), and BCE on the centerness of the positives inside
their boxes (a fallback lies outside, where the centerness formula says 0: training it there would
teach the branch to suppress exactly the small objects). Scores at decoding are
sqrt(sigmoid(class) * sigmoid(centerness)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss


def locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """(H*W, 2) xy centres of the map's cells in input pixels, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride


def decode_boxes(distances: Tensor, points: Tensor, stride: int) -> Tensor:
    """(…, N, 4) raw distance outputs -> xyxy boxes around the (N, 2) points."""
    ltrb = F.softplus(distances) * stride
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)


def assign(
    points: Tensor, boxes: Tensor, stride: int, radius: float, central: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """Index of the box each point regresses (-1 = background), the positive mask, and the mask
    of fallback positives (points outside the box they regress).

    A point is a candidate for a box when it lies inside it and, along each axis, within
    max(`radius` strides, `central` x the box's half-side) of its centre; among several
    candidates' boxes it takes the smallest. With one level of stride 8, a large box would
    otherwise have 3 x 3 positives and teach the classes that the rest of its object is
    background; multi-level FCOS gives a large box a coarse level where 1.5 strides span about
    60-75 % of its half-side. Every box gets at least one
    positive: a box left without one (too small to hold a point, or outbid by smaller boxes) takes
    the free point nearest its centre, smallest boxes first, as a fallback."""
    n = len(points)
    index = torch.full((n,), -1, dtype=torch.long, device=points.device)
    if len(boxes) == 0:
        none = torch.zeros(n, dtype=torch.bool, device=points.device)
        return index, none, none
    x, y = points[:, :1], points[:, 1:]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    distance = ((points[:, None] - centre[None]) ** 2).sum(-1)
    reach = ((boxes[:, 2:] - boxes[:, :2]) / 2 * central).clamp(min=radius * stride)
    candidate = inside & ((points[:, None] - centre[None]).abs() <= reach[None]).all(-1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    masked = torch.where(candidate, area.expand(n, -1), torch.full_like(distance, float("inf")))
    best_area, best = masked.min(1)
    positive = torch.isfinite(best_area)
    index[positive] = best[positive]
    covered = torch.zeros(len(boxes), dtype=torch.bool, device=points.device)
    covered[index[positive]] = True
    for b in sorted(torch.nonzero(~covered).flatten().tolist(), key=lambda b: area[b].item()):
        free = torch.where(positive, torch.full_like(distance[:, b], float("inf")), distance[:, b])
        point = int(free.argmin())
        index[point], positive[point] = b, True
    fallback = positive & ~inside[torch.arange(n, device=points.device), index.clamp(min=0)]
    return index, positive, fallback


def centerness(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of points in their boxes."""
    ltrb = torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], -1).clamp(min=1e-6)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt(
        (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    )


def detection_loss(
    raw: Tensor,
    targets: list[dict[str, Tensor]],
    points: Tensor,
    stride: int,
    num_classes: int,
    radius: float = 1.5,
) -> dict[str, Tensor]:
    """Focal class loss, GIoU box loss and centerness BCE for raw (B, N, 5 + C) outputs; positives
    as `assign` with its default `central` (README, "Real data", for what it measured)."""
    cls_targets, box_targets, pred_boxes, ctr_logits, ctr_targets, fallbacks = (
        [] for _ in range(6)
    )
    for out, target in zip(raw, targets, strict=True):
        index, positive, fallback = assign(points, target["boxes"], stride, radius)
        one_hot = torch.zeros(len(points), num_classes, device=raw.device)
        one_hot[positive, target["labels"][index[positive]]] = 1.0
        cls_targets.append(one_hot)
        boxes = target["boxes"][index[positive]]
        box_targets.append(boxes)
        pred_boxes.append(decode_boxes(out[positive, :4], points[positive], stride))
        ctr_logits.append(out[positive, 4])
        ctr_targets.append(centerness(points[positive], boxes))
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
    points: Tensor,
    stride: int,
    image_size: int,
    score_threshold: float,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms: int = 1000,
) -> list[dict[str, Tensor]]:
    """Per image: xyxy boxes (input pixels), scores and labels after threshold and batched NMS."""
    results = []
    for out in raw:
        scores = torch.sqrt(torch.sigmoid(out[:, 5:]) * torch.sigmoid(out[:, 4:5])).flatten()
        keep = torch.nonzero(scores > score_threshold).squeeze(1)
        keep = keep[scores[keep].topk(min(pre_nms, len(keep))).indices]
        num_classes = out.shape[1] - 5
        location, labels = keep // num_classes, keep % num_classes
        boxes = decode_boxes(out[location, :4], points[location], stride).clamp(0, image_size)
        kept = batched_nms(boxes, scores[keep], labels, nms_iou)[:max_detections]
        results.append({"boxes": boxes[kept], "scores": scores[keep][kept], "labels": labels[kept]})
    return results
