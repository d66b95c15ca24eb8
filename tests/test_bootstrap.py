"""Paired bootstrap intervals: against analytic intervals, McNemar's logic, coverage, and the
full-set metrics at the identity resample."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from seqmtl.analysis.bootstrap import (
    drop_interval,
    map50_scorer,
    miou_scorer,
    once_per_draw,
    resamples,
    top1_scorer,
)
from seqmtl.tasks.metrics import coco_detection_metrics, miou


def test_top1_interval_matches_the_analytic_one() -> None:
    """A baseline right on every image: the relative drop is 1 - p of the final model, whose
    95 % interval is about 1 - p -+ 1.96 sqrt(p (1 - p) / n)."""
    n, p = 400, 0.8
    final = np.arange(n) < p * n
    interval = drop_interval(
        top1_scorer(np.ones(n)), top1_scorer(final), resamples(n, 2000, seed=1), max_drop=0.05
    )
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert interval["low"] == pytest.approx(1 - p - half, abs=0.006)
    assert interval["high"] == pytest.approx(1 - p + half, abs=0.006)
    assert interval["verdict"] == "fail"


def test_only_disagreements_move_a_paired_interval() -> None:
    """McNemar's logic: images both models score alike carry no evidence of a difference."""
    n = 200
    rng = np.random.default_rng(0)
    correct = rng.random(n) < 0.7
    draws = resamples(n, 500, seed=2)
    same = drop_interval(top1_scorer(correct), top1_scorer(correct), draws, 0.05)
    assert (same["low"], same["high"], same["verdict"]) == (0.0, 0.0, "pass")
    # final wrong on 10 images where the baseline was right, never the other way: every
    # resample that draws one of them shows a drop, and none shows a gain
    worse = correct.copy()
    worse[np.flatnonzero(correct)[:10]] = False
    one_way = drop_interval(top1_scorer(correct), top1_scorer(worse), draws, 0.05)
    assert one_way["low"] > 0.0 and one_way["verdict"] == "undecided"


def test_intervals_cover_the_true_drop_about_95_percent_of_the_time() -> None:
    """Replicates of 300 val images drawn from a population where the baseline is right with
    probability 0.9 and the final model loses 12 % of those (true relative drop 0.12)."""
    rng = np.random.default_rng(3)
    covered, replicates, n = 0, 300, 300
    for r in range(replicates):
        baseline = rng.random(n) < 0.9
        final = baseline & (rng.random(n) >= 0.12)
        interval = drop_interval(
            top1_scorer(baseline), top1_scorer(final), resamples(n, 400, seed=r), 0.05
        )
        covered += interval["low"] <= 0.12 <= interval["high"]
    assert 0.91 <= covered / replicates <= 0.98


def test_images_for_the_target_width_follow_one_over_root_n() -> None:
    n = 100
    baseline, final = np.ones(n), np.arange(n) >= 20
    interval = drop_interval(
        top1_scorer(baseline), top1_scorer(final), resamples(n, 2000, seed=4), 0.05
    )
    half = (interval["high"] - interval["low"]) / 2
    assert interval["images_for_target"] == math.ceil(n * (half / 0.025) ** 2)
    assert interval["images_for_target"] > 4 * n  # +-8 % at 100 images needs ~10x as many


def test_miou_of_summed_per_image_matrices_is_the_full_set_miou() -> None:
    rng = np.random.default_rng(5)
    matrices = rng.integers(0, 50, size=(12, 4, 4))
    matrices[:, 3] = 0  # class 3 never in the targets
    full = miou(torch.from_numpy(matrices.sum(0)))["miou"]
    assert miou_scorer(matrices)(np.arange(12)) == pytest.approx(full, abs=1e-12)
    twice = miou(torch.from_numpy(matrices.sum(0) + matrices[0]))["miou"]
    assert miou_scorer(matrices)(np.r_[np.arange(12), 0]) == pytest.approx(twice, abs=1e-12)


def coco_case() -> tuple[COCO, list[dict], list[int]]:
    """Six images with one to three boxes of two categories, and noisy detections of them."""
    rng = np.random.default_rng(6)
    images, annotations, detections = [], [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "width": 200, "height": 200})
        for _ in range(int(rng.integers(1, 4))):
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 20, 20], [100, 100, 90, 90]))
            category = int(rng.integers(1, 3))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                 "category_id": category, "bbox": [x, y, w, h], "area": w * h}
            )  # fmt: skip
            shift, score = float(rng.normal(0, 8)), float(rng.uniform(0.1, 1))
            detections.append(
                {"image_id": image_id, "category_id": category,
                 "bbox": [x + shift, y, w, h], "score": score}
            )  # fmt: skip
        detections.append(
            {"image_id": image_id, "category_id": 1,
             "bbox": [150.0, 150.0, 30.0, 30.0], "score": float(rng.uniform(0, 1))}
        )  # fmt: skip
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, detections, [i["id"] for i in images]


def test_map50_at_the_identity_resample_is_cocoevals() -> None:
    gt, detections, ids = coco_case()
    score = map50_scorer(gt, detections, ids)
    expected = coco_detection_metrics(gt, detections, 0.5)["map50"]
    assert 0.1 < expected < 1.0
    assert score(np.arange(len(ids))) == pytest.approx(expected, abs=1e-12)
    # every image drawn twice, each copy a distinct image: the same precision-recall curve
    assert score(np.repeat(np.arange(len(ids)), 2)) == pytest.approx(expected, abs=1e-12)
    # one image alone: COCOeval on that image's ground truth and detections only
    one = gt.loadImgs([ids[0]])
    single = COCO()
    single.dataset = {"images": one, "annotations": gt.loadAnns(gt.getAnnIds(imgIds=[ids[0]])),
                      "categories": gt.dataset["categories"]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        single.createIndex()
    alone = [d for d in detections if d["image_id"] == ids[0]]
    assert score(np.array([0])) == pytest.approx(
        coco_detection_metrics(single, alone, 0.5)["map50"], abs=1e-12
    )


def test_a_model_scored_against_two_others_is_scored_once_per_draw() -> None:
    calls: list[bytes] = []

    def counted(draw: np.ndarray) -> float:
        calls.append(draw.tobytes())
        return float(draw.mean())

    draws = resamples(10, 50, seed=0)
    score = once_per_draw(counted)
    first = [score(d) for d in draws]
    assert [score(d) for d in draws] == first == [float(d.mean()) for d in draws]
    assert len(calls) == len({d.tobytes() for d in draws})
