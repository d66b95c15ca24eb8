"""Metrics of the three tasks: segmentation mIoU, COCO detection, classification top-1."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

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


def coco_detection_metrics(
    gt: COCO, detections: list[dict], score_threshold: float, iou_threshold: float = 0.5
) -> dict:
    """COCO box metrics over all images of `gt`, from one COCOeval (bbox) run.

    `detections` are in COCO results format (image_id, category_id, bbox [x, y, w, h] in original
    image coordinates, score). map = AP@[.5:.95] (COCOeval stats[0]), map50 = AP@.5 (stats[1]),
    both 0.0 when there are no detections or COCOeval reports -1 (no GT at all).
    precision = TP / (TP + FP), recall = TP / #GT, f1 = 2PR / (P + R), each 0.0 when undefined,
    over the detections scoring at least `score_threshold`, matched as COCOeval matches them at
    IoU `iou_threshold` (greedily by score, per image and category, at most 100 per image and
    category; a detection matched to a crowd region counts neither way; crowd regions are not GT).
    """
    n_gt = sum(not a.get("iscrowd", 0) for a in gt.dataset.get("annotations", []))
    if not detections:
        return {"map": 0.0, "map50": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes writes area/id/iscrowd into the dicts it gets: hand it copies.
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    (t,) = np.flatnonzero(np.isclose(ev.params.iouThrs, iou_threshold))
    tp = fp = 0
    for image in ev.evalImgs:
        if image is None or image["aRng"] != ev.params.areaRng[0]:  # the "all" area range only
            continue
        counted = (np.asarray(image["dtScores"]) >= score_threshold) & ~image["dtIgnore"][t]
        matched = image["dtMatches"][t] > 0
        tp += int((counted & matched).sum())
        fp += int((counted & ~matched).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ap, ap50 = max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)
    return {"map": ap, "map50": ap50, "precision": precision, "recall": recall, "f1": f1}


def top1(logits_or_pred: Tensor, target: Tensor) -> float:
    """Fraction of samples with argmax(logits) (or the given class index) == target."""
    pred = logits_or_pred.argmax(-1) if logits_or_pred.ndim > target.ndim else logits_or_pred
    return (pred == target).float().mean().item()
