"""Paired bootstrap intervals of a drop between two models scored on the same val images.

Each model's evaluation keeps per-image statistics (a stage output, `Task.per_image`): per image
its segmentation confusion matrix, its detections, or whether its class was right. One resample
draws n of the n val images with replacement (seeded); both models are scored on the same
resample, and the relative drop (a - b) / a of model a (baseline or reference) to model b (final)
is recorded. The 95 % interval is the 2.5th and 97.5th percentiles over the resamples:

- mIoU: the resampled images' confusion matrices summed (an image drawn twice counts twice);
- mAP@.5: COCOeval (bbox, IoU .5, area "all", 100 detections) over the resampled images, an image
  drawn twice counted as two distinct images: `evaluate` runs once per model, and each resample
  re-runs only `accumulate` on the resampled per-image matches;
- top-1: the mean of the resampled images' correctness.

Images needed: the relative drop's interval narrows as 1 / sqrt(n) for the same two models, so
the val size at which its half-width would be `target` is n * (half-width / target)^2.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seqmtl.tasks.metrics import miou

Scorer = Callable[[np.ndarray], float]


def resamples(n: int, count: int, seed: int) -> np.ndarray:
    """(count, n) image indices drawn with replacement, seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def miou_scorer(matrices: np.ndarray) -> Scorer:
    """mIoU of the summed (n, C, C) per-image confusion matrices of the drawn images."""
    flat = matrices.reshape(len(matrices), -1).astype(np.int64)
    size = matrices.shape[1]

    def score(draw: np.ndarray) -> float:
        counts = np.bincount(draw, minlength=len(flat)) @ flat
        return miou(torch.from_numpy(counts.reshape(size, size)))["miou"]

    return score


def top1_scorer(correct: np.ndarray) -> Scorer:
    """Top-1 of the drawn images from their (n,) 0 / 1 correctness."""
    correct = correct.astype(np.float64)
    return lambda draw: float(correct[draw].mean())


def map50_scorer(gt: COCO, detections: list[dict[str, Any]], image_ids: list[int]) -> Scorer:
    """mAP@.5 of the drawn images (indices into `image_ids`), COCOeval's AP@.5 with area "all"
    and 100 detections per image: the mean of the interpolated precision over the recall points
    and the categories with ground truth among the drawn images (0.0 without detections)."""
    if not detections:
        return lambda draw: 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
    per_category = len(image_ids)
    by_category = [
        ev.evalImgs[k * per_category : (k + 1) * per_category] for k in range(len(ev.params.catIds))
    ]

    def score(draw: np.ndarray) -> float:
        resampled = copy.copy(ev)
        resampled.evalImgs = [e for images in by_category for e in (images[i] for i in draw)]
        params = copy.deepcopy(ev.params)
        params.imgIds = list(range(len(draw)))
        resampled.params = resampled._paramsEval = params
        with contextlib.redirect_stdout(io.StringIO()):
            resampled.accumulate()
        precision = resampled.eval["precision"][0, :, :, 0, 0]
        valid = precision[precision > -1]
        return float(valid.mean()) if len(valid) else 0.0

    return score


def once_per_draw(scorer: Scorer) -> Scorer:
    """`scorer`, scoring each distinct draw once (a model scored against several others)."""
    scores: dict[bytes, float] = {}

    def score(draw: np.ndarray) -> float:
        key = draw.tobytes()
        if key not in scores:
            scores[key] = scorer(draw)
        return scores[key]

    return score


def drop_interval(
    baseline: Scorer,
    final: Scorer,
    draws: np.ndarray,
    max_drop: float,
    level: float = 0.95,
    target: float = 0.025,
) -> dict[str, Any]:
    """The relative drop's `level` percentile interval over `draws` (resamples whose baseline is
    0 are left out: their drop is undefined), its verdict (pass: upper end <= `max_drop`; fail:
    lower end > `max_drop`; else undecided), and the val images its half-width would need to be
    `target`."""
    drops = []
    for draw in draws:
        a = baseline(draw)
        if a > 0:
            drops.append((a - final(draw)) / a)
    if not drops:
        return {"low": None, "high": None, "verdict": "undecided", "resamples": 0}
    low, high = np.quantile(drops, [(1 - level) / 2, (1 + level) / 2])
    low, high = round(float(low), 6), round(float(high), 6)
    verdict = "pass" if high <= max_drop else "fail" if low > max_drop else "undecided"
    half = (high - low) / 2
    n = draws.shape[1]
    return {
        "low": low,
        "high": high,
        "verdict": verdict,
        "resamples": len(drops),
        "images": n,
        "images_for_target": math.ceil(n * (half / target) ** 2) if half > 0 else n,
    }


def task_scorer(task: str, stats: dict[str, Any], annotation_file: Path | None = None) -> Scorer:
    """The scorer of `task`'s primary metric from one model's per-image statistics
    (`Task.per_image`); detection reads its split's ground truth from `annotation_file`."""
    if task == "seg":
        confusion = np.asarray(stats["confusion"], dtype=np.int64)
        side = math.isqrt(confusion.shape[1])
        return miou_scorer(confusion.reshape(-1, side, side))
    if task == "cls":
        return top1_scorer(np.asarray(stats["correct"]))
    if task == "det":
        if annotation_file is None:
            raise ValueError("detection's bootstrap needs its val annotation file")
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(annotation_file))
        return map50_scorer(gt, stats["detections"], stats["image_ids"])
    raise ValueError(f"no bootstrap scorer for task {task!r}")


def image_count(stats: dict[str, Any]) -> int:
    """The number of val images in one task's per-image statistics."""
    return len(stats["image_ids"] if "image_ids" in stats else next(iter(stats.values())))
