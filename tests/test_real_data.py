"""End to end on the real mirror: download (as a local mirror) then subsample, real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seqmtl.data.datasets import build_dataset, class_names
from seqmtl.data.download import fetch_all
from seqmtl.data.subsample import subsample
from seqmtl.data.synthetic import IMAGENETTE_WNIDS
from seqmtl.tasks.detection import assign, pyramid_points


@pytest.fixture(scope="module")
def real_mini(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("real")
    fetch_all(root / "raw", root / "archives", str(mirror))
    stats = subsample(root / "raw", root / "mini", 0, 240, 300, 10)
    return root / "mini", stats


def test_counts(real_mini: tuple[Path, dict]) -> None:
    """The real profile's sizes (240 train, 300 val asked) on the v2 mirror: VOC's val list and
    Imagenette's val split hold fewer than 300 (260 and 60: all of them), COCO's 600 eligible
    images give both splits in full."""
    _, stats = real_mini
    counts = {t: {s: stats[t][s]["images"] for s in ("train", "val")} for t in stats}
    assert counts == {
        "seg": {"train": 240, "val": 260},
        "det": {"train": 240, "val": 300},
        "cls": {"train": 240, "val": 60},
    }


def test_learning_curve_splits(real_mini: tuple[Path, dict], tmp_path: Path) -> None:
    """The detection learning curve's data (val_seed): one val set of 200 of COCO's 600 eligible
    images for 120 and for 400 (all the rest) training images, disjoint from both."""
    raw = real_mini[0].parent / "raw"
    splits = {}
    for n_train in (120, 400):
        stats = subsample(raw, tmp_path / str(n_train), 1, n_train, 200, 10, val_seed=0)
        assert {s: stats["det"][s]["images"] for s in ("train", "val")} == {
            "train": n_train,
            "val": 200,
        }
        splits[n_train] = {
            s: {p.name for p in (tmp_path / str(n_train) / "det" / s).iterdir()}
            for s in ("train", "val")
        }
    assert splits[120]["val"] == splits[400]["val"]
    assert not splits[400]["train"] & splits[400]["val"]


def test_detection_classes_are_the_most_frequent_and_on_both_sides(
    real_mini: tuple[Path, dict],
) -> None:
    source = json.loads(
        (real_mini[0].parent / "raw/coco/annotations/instances_val2017.json").read_text()
    )
    images: dict[int, set] = {}
    for a in source["annotations"]:
        images.setdefault(a["category_id"], set()).add(a["image_id"])
    counts = sorted((len(v) for v in images.values()), reverse=True)
    names = {c["id"]: c["name"] for c in source["categories"]}
    kept = class_names(real_mini[0])["det"]
    assert len(kept) == 10
    assert all(len(images[c]) >= counts[9] for c, n in names.items() if n in kept)
    stats = real_mini[1]["det"]
    for name in kept:
        assert stats["train"]["boxes_per_class"][name] > 0, name
        assert stats["val"]["boxes_per_class"][name] > 0, name


@pytest.mark.parametrize("size", [320, 512])
def test_every_real_box_gets_a_positive_location(real_mini: tuple[Path, dict], size: int) -> None:
    """On the mirror's own boxes, at the real profile's size and the challenge's: every box gets
    a positive on some level, fewer than a tenth only as a fallback."""
    dataset = build_dataset(real_mini[0], "det", "train", size, train=False)
    points = pyramid_points(size, torch.device("cpu"))
    boxes = fallback_only = 0
    for i in range(len(dataset)):
        target = dataset[i][1]["boxes"]
        index, positive, fallback = assign(points, target)
        assert set(index[positive].tolist()) == set(range(len(target)))
        regular = set(index[positive & ~fallback].tolist())
        boxes += len(target)
        fallback_only += len(target) - len(regular)
    assert fallback_only / boxes < 0.1


def test_class_names(real_mini: tuple[Path, dict]) -> None:
    names = class_names(real_mini[0])
    assert names["cls"] == sorted(IMAGENETTE_WNIDS)
    assert names["seg"][0] == "background" and len(names["seg"]) == 21


def test_masks_hold_voc_values(real_mini: tuple[Path, dict]) -> None:
    masks = sorted((real_mini[0] / "seg" / "SegmentationClass").glob("*.png"))
    assert len(masks) == 500
    values: set[int] = set()
    for path in masks[:60]:
        mask = Image.open(path)
        assert mask.mode == "P"
        values |= set(np.unique(np.asarray(mask)).tolist())
    assert values <= set(range(21)) | {255} and {0, 255} <= values and len(values) > 5


def test_coco_boxes_lie_inside_their_images(real_mini: tuple[Path, dict]) -> None:
    coco = json.loads((real_mini[0] / "det/annotations/instances_val.json").read_text())
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    assert coco["annotations"]
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= width + 1 and y + h <= height + 1


def test_real_datasets_load(real_mini: tuple[Path, dict]) -> None:
    det = build_dataset(real_mini[0], "det", "val", 128, train=False)
    image, target = det[0]
    assert image.shape == (3, 128, 128) and len(target["boxes"]) == len(target["labels"]) > 0
    assert (target["boxes"] >= 0).all() and (target["boxes"] <= 128.5).all()
