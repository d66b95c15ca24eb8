"""Metrics of the three tasks: segmentation mIoU, COCO detection, classification top-1."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params
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
) -> dict[str, float | None]:
    """COCO box metrics over all images of `gt`, from one COCOeval (bbox) run.

    `detections` are in COCO results format (image_id, category_id, bbox [x, y, w, h] in original
    image coordinates, score). map = AP@[.5:.95] (COCOeval stats[0]), map50 = AP@.5 (stats[1]),
    both 0.0 when there are no detections or COCOeval reports -1 (no GT at all).
    map_small / map_medium / map_large = AP@[.5:.95] of COCO's area ranges (stats[3:6]), and
    ap50_<category> = AP@.5 of one category (area "all", 100 detections per image), each None
    where the split has no GT of that range or category.
    precision = TP / (TP + FP), recall = TP / #GT, f1 = 2PR / (P + R), each 0.0 when undefined,
    over the detections scoring at least `score_threshold`, matched as COCOeval matches them at
    IoU `iou_threshold` (greedily by score, per image and category, at most 100 per image and
    category; a detection matched to a crowd region counts neither way; crowd regions are not GT).
    """
    annotations = [a for a in gt.dataset.get("annotations", []) if not a.get("iscrowd", 0)]
    names = {c["id"]: c["name"].replace(" ", "_") for c in gt.dataset.get("categories", [])}
    ranges = dict(zip(Params("bbox").areaRngLbl, Params("bbox").areaRng, strict=True))
    if not detections:
        present = {a["category_id"] for a in annotations}
        sizes = {
            f"map_{label}": 0.0 if any(low <= a["area"] < high for a in annotations) else None
            for label, (low, high) in ranges.items()
            if label != "all"
        }
        per_class = {f"ap50_{n}": 0.0 if c in present else None for c, n in names.items()}
        zeros = {"map": 0.0, "map50": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
        return zeros | sizes | per_class
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
    recall = tp / len(annotations) if annotations else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ap, ap50 = max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)
    sizes = {
        f"map_{label}": float(v) if v > -1 else None
        for label, v in zip(("small", "medium", "large"), ev.stats[3:6], strict=True)
    }
    per_class = {}
    for k, category in enumerate(ev.params.catIds):
        curve = ev.eval["precision"][t, :, k, 0, -1]  # recall points, area "all", 100 dets
        per_class[f"ap50_{names[category]}"] = (
            float(curve[curve > -1].mean()) if (curve > -1).any() else None
        )
    summary = {"map": ap, "map50": ap50, "precision": precision, "recall": recall, "f1": f1}
    return summary | sizes | per_class


def top1(logits_or_pred: Tensor, target: Tensor) -> float:
    """Fraction of samples with argmax(logits) (or the given class index) == target."""
    pred = logits_or_pred.argmax(-1) if logits_or_pred.ndim > target.ndim else logits_or_pred
    return (pred == target).float().mean().item()
