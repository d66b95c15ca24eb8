"""Metrics of the three tasks: segmentation mIoU, COCO detection, classification top-1."""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.ops import box_iou

IGNORE_INDEX = 255


class ConfusionMatrix:
    """(C x C) int64 confusion matrix over all evaluated pixels; rows = target, cols = prediction.

    Masks must be compared at their original resolution: the caller upsamples the logits to the
    target's size before the argmax. Pixels whose target is 255 are ignored.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the pixels of `pred`/`target` ([H, W] or [B, H, W] class indices)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} != target {tuple(target.shape)}")
        keep = target != IGNORE_INDEX
        idx = target[keep].long() * self.num_classes + pred[keep].long()
        counts = torch.bincount(idx, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes).cpu()


def miou(confusion: Tensor) -> dict:
    """IoU_c = TP / (TP + FP + FN); mIoU = mean over classes with TP + FP + FN > 0.

    Classes with an empty union are None in `iou_per_class`; pixel_acc = trace / total.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    iou = tp / union.clamp(min=1)
    total = confusion.sum().item()
    return {
        "miou": iou[present].mean().item() if present.any() else 0.0,
        "iou_per_class": [
            v if p else None for v, p in zip(iou.tolist(), present.tolist(), strict=True)
        ],
        "pixel_acc": tp.sum().item() / total if total else 0.0,
    }


def _xyxy(boxes: list[list[float]]) -> Tensor:
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def _count_matches(
    gt: COCO, detections: list[dict], score_threshold: float, iou_threshold: float
) -> tuple[int, int, int]:
    """Greedy matching per (image, category) in descending score order -> (TP, FP, #GT).

    Each non-crowd GT is matched at most once, to the unmatched GT of highest IoU >= threshold.
    Crowd GT (iscrowd=1) count neither as GT nor FN; an unmatched detection overlapping a crowd
    box with IoU >= threshold is neither TP nor FP.
    """
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for ann in gt.dataset.get("annotations", []):
        gts[ann["image_id"], ann["category_id"]].append(ann)
    dets: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for d in detections:
        if d["score"] >= score_threshold:
            dets[d["image_id"], d["category_id"]].append(d)
    n_gt = sum(not a.get("iscrowd", 0) for anns in gts.values() for a in anns)
    tp = fp = 0
    for key, group in dets.items():
        group = sorted(group, key=lambda d: -d["score"])
        anns = gts.get(key, [])
        normal = _xyxy([a["bbox"] for a in anns if not a.get("iscrowd", 0)])
        crowd = _xyxy([a["bbox"] for a in anns if a.get("iscrowd", 0)])
        boxes = _xyxy([d["bbox"] for d in group])
        iou = box_iou(boxes, normal)
        crowd_hit = (box_iou(boxes, crowd) >= iou_threshold).any(1)
        matched = torch.zeros(len(normal), dtype=torch.bool)
        for i in range(len(group)):
            cand = iou[i].masked_fill(matched, -1.0)
            if len(normal) and cand.max() >= iou_threshold:
                matched[cand.argmax()] = True
                tp += 1
            elif not crowd_hit[i]:
                fp += 1
    return tp, fp, n_gt


def coco_detection_metrics(
    gt: COCO, detections: list[dict], score_threshold: float, iou_threshold: float = 0.5
) -> dict:
    """COCO box metrics over all images of `gt`.

    `detections` are in COCO results format (image_id, category_id, bbox [x, y, w, h] in original
    image coordinates, score). map = AP@[.5:.95] (COCOeval stats[0]), map50 = AP@.5 (stats[1]),
    both 0.0 when there are no detections or COCOeval reports -1 (no GT at all).
    precision = TP / (TP + FP), recall = TP / #GT, f1 = 2PR / (P + R), each 0.0 when undefined,
    counting only detections with score >= score_threshold at IoU >= iou_threshold.
    """
    tp, fp, n_gt = _count_matches(gt, detections, score_threshold, iou_threshold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ap = ap50 = 0.0
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            # loadRes writes area/id/iscrowd into the dicts it gets: hand it copies.
            dt = gt.loadRes([dict(d) for d in detections])
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ap, ap50 = max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)
    return {"map": ap, "map50": ap50, "precision": precision, "recall": recall, "f1": f1}


def top1(logits_or_pred: Tensor, target: Tensor) -> float:
    """Fraction of samples with argmax(logits) (or the given class index) == target."""
    pred = logits_or_pred.argmax(-1) if logits_or_pred.ndim > target.ndim else logits_or_pred
    return (pred == target).float().mean().item()
