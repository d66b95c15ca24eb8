"""Anchor-free single-level detection (FCOS style) on the head's stride-8 map.

Per location the head emits 4 box distances (left, top, right, bottom, as softplus(x) * stride),
1 centerness logit and C class logits. A location is positive for a box when it lies inside the box
and within `radius` strides of its centre (a box too small to hold any location takes the one
nearest its centre); among several boxes it takes the smallest. Losses: sigmoid focal loss on the
classes (normalised by the positives), GIoU loss on the boxes weighted by the centerness target,
and BCE on the centerness. Scores at decoding are sqrt(sigmoid(class) * sigmoid(centerness)).
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


def assign(points: Tensor, boxes: Tensor, stride: int, radius: float) -> tuple[Tensor, Tensor]:
    """Index of the box each point regresses (-1 = background), and the positive mask."""
    n = len(points)
    if len(boxes) == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device), torch.zeros(
            n, dtype=torch.bool, device=points.device
        )
    x, y = points[:, :1], points[:, 1:]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    near = ((points[:, None] - centre[None]).abs() <= radius * stride).all(-1)
    candidate = inside & near
    closest = ((points[:, None] - centre[None]) ** 2).sum(-1).argmin(0)
    candidate[closest, torch.arange(len(boxes), device=points.device)] = True
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(n, -1)
    area = torch.where(candidate, area, torch.full_like(area, float("inf")))
    best_area, index = area.min(1)
    positive = torch.isfinite(best_area)
    return torch.where(positive, index, torch.full_like(index, -1)), positive


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
    """Focal class loss, GIoU box loss and centerness BCE for raw (B, N, 5 + C) outputs."""
    cls_targets, box_targets, pred_boxes, ctr_logits, ctr_targets = [], [], [], [], []
    for out, target in zip(raw, targets, strict=True):
        index, positive = assign(points, target["boxes"], stride, radius)
        one_hot = torch.zeros(len(points), num_classes, device=raw.device)
        one_hot[positive, target["labels"][index[positive]]] = 1.0
        cls_targets.append(one_hot)
        boxes = target["boxes"][index[positive]]
        box_targets.append(boxes)
        pred_boxes.append(decode_boxes(out[positive, :4], points[positive], stride))
        ctr_logits.append(out[positive, 4])
        ctr_targets.append(centerness(points[positive], boxes))
    num_pos = max(sum(len(b) for b in box_targets), 1)
    cls_loss = sigmoid_focal_loss(raw[..., 5:], torch.stack(cls_targets), reduction="sum") / num_pos
    ctr_target = torch.cat(ctr_targets)
    if len(ctr_target) == 0:
        zero = raw.sum() * 0.0
        return {"det_cls": cls_loss, "det_box": zero, "det_ctr": zero}
    giou = generalized_box_iou_loss(torch.cat(pred_boxes), torch.cat(box_targets), reduction="none")
    box_loss = (giou * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
    ctr_loss = F.binary_cross_entropy_with_logits(torch.cat(ctr_logits), ctr_target)
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
