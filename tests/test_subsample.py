"""Subsample: seeded, byte-identical, disjoint splits, COCO filtered, short sources handled."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqmtl.data.datasets import DataError
from seqmtl.data.subsample import detection_classes, stratified_split, subsample
from seqmtl.data.synthetic import COCO_FIRST_TEN

CLASSES = list(COCO_FIRST_TEN)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_mini(tiny_raw: Path, tmp_path: Path) -> None:
    first = subsample(tiny_raw, tmp_path / "a", 3, 8, 4, CLASSES)
    second = subsample(tiny_raw, tmp_path / "b", 3, 8, 4, CLASSES)
    assert first == second
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    subsample(tiny_raw, tmp_path / "c", 4, 8, 4, CLASSES)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_splits_are_disjoint_and_counted(tiny_raw: Path, tmp_path: Path) -> None:
    stats = subsample(tiny_raw, tmp_path / "m", 0, 8, 4, CLASSES)
    seg = tmp_path / "m/seg/ImageSets/Segmentation"
    train, val = (set((seg / f"{s}.txt").read_text().split()) for s in ("train", "val"))
    assert len(train) == 8 and len(val) == 4 and not train & val
    det = {
        s: json.loads((tmp_path / f"m/det/annotations/instances_{s}.json").read_text())
        for s in ("train", "val")
    }
    ids = {s: {i["id"] for i in det[s]["images"]} for s in det}
    assert not ids["train"] & ids["val"]
    assert stats["det"]["train"]["images"] + stats["det"]["val"]["images"] == 12
    for split in ("train", "val"):
        files = {p.name for p in (tmp_path / "m/det" / split).iterdir()}
        assert files == {i["file_name"] for i in det[split]["images"]}
        assert stats["det"][split]["boxes"] == len(det[split]["annotations"])
    cls = {s: {p.name for p in (tmp_path / "m/cls" / s).rglob("*.JPEG")} for s in ("train", "val")}
    assert len(cls["train"]) == 8 and len(cls["val"]) == 4 and not cls["train"] & cls["val"]
    assert sum(stats["cls"]["train"]["images_per_class"].values()) == 8


def split_files(mini: Path) -> dict[str, set[str]]:
    """The images of each task and split of a mini layout, as '<task>/<split>' -> names."""
    seg = mini / "seg/ImageSets/Segmentation"
    files = {f"seg/{s}": set((seg / f"{s}.txt").read_text().split()) for s in ("train", "val")}
    for s in ("train", "val"):
        files[f"det/{s}"] = {p.name for p in (mini / "det" / s).iterdir()}
        files[f"cls/{s}"] = {p.name for p in (mini / "cls" / s).rglob("*.JPEG")}
    return files


def test_val_seed_fixes_the_val_sets_across_seeds_and_train_sizes(
    tiny_raw: Path, tmp_path: Path
) -> None:
    runs = {
        (seed, n_train): split_files_of(tiny_raw, tmp_path / f"m{seed}_{n_train}", seed, n_train)
        for seed, n_train in ((0, 4), (0, 8), (1, 8))
    }
    for task in ("seg", "det", "cls"):
        vals = [files[f"{task}/val"] for files in runs.values()]
        assert all(v == vals[0] for v in vals), task
        for (_, n_train), files in runs.items():
            assert len(files[f"{task}/train"]) == n_train and not files[f"{task}/train"] & vals[0]
    assert len(runs[0, 8]["seg/val"]) == len(runs[0, 8]["cls/val"]) == 4
    assert runs[0, 8]["det/train"] != runs[1, 8]["det/train"]


def split_files_of(raw: Path, mini: Path, seed: int, n_train: int) -> dict[str, set[str]]:
    """The split files of `subsample` with 4 val images drawn with val_seed 7."""
    subsample(raw, mini, seed, n_train, 4, CLASSES, val_seed=7)
    return split_files(mini)


def test_seg_histogram_counts_images_per_class(tiny_raw: Path, tmp_path: Path) -> None:
    stats = subsample(tiny_raw, tmp_path / "m", 0, 8, 4, CLASSES)
    voc = tmp_path / "m/seg"
    ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    counts: dict[int, int] = {}
    for name in ids:
        for v in np.unique(np.asarray(Image.open(voc / "SegmentationClass" / f"{name}.png"))):
            counts[int(v)] = counts.get(int(v), 0) + 1
    assert stats["seg"]["val"]["images_per_class"]["background"] == counts[0] == 4
    assert sum(stats["seg"]["val"]["images_per_class"].values()) == sum(
        n for v, n in counts.items() if v != 255
    )


def test_coco_is_filtered_to_the_asked_classes(tiny_raw: Path, tmp_path: Path) -> None:
    subsample(tiny_raw, tmp_path / "m", 0, 4, 2, ["bus", "car"])
    for split in ("train", "val"):
        coco = json.loads((tmp_path / f"m/det/annotations/instances_{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == ["bus", "car"]
        kept = {c["id"] for c in coco["categories"]}
        assert {a["category_id"] for a in coco["annotations"]} <= kept
        with_objects = {a["image_id"] for a in coco["annotations"]}
        assert {i["id"] for i in coco["images"]} == with_objects


def test_short_source_gives_all_it_has_with_a_warning(
    tiny_raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        stats = subsample(tiny_raw, tmp_path / "m", 0, 40, 20, CLASSES)
    assert stats["seg"]["train"]["images"] == 12 and stats["seg"]["val"]["images"] == 6
    assert stats["det"]["train"]["images"] + stats["det"]["val"]["images"] == 18
    assert stats["cls"]["train"]["images"] == 12
    assert "only 12 eligible images, 40 asked" in caplog.text


def test_unknown_class_and_bad_counts_are_rejected(tiny_raw: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"subsample.det_classes: \['unicorn'\]"):
        subsample(tiny_raw, tmp_path / "m", 0, 4, 2, ["car", "unicorn"])
    with pytest.raises(ValueError, match=r"subsample\.n_train / n_val must be positive"):
        subsample(tiny_raw, tmp_path / "m", 0, 0, 2, CLASSES)
    assert not (tmp_path / "m").exists()


def test_integer_det_classes_keep_the_categories_in_most_images() -> None:
    coco = {
        "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3, 4)],
        "annotations": [
            {"image_id": img, "category_id": c}
            for c, imgs in ((1, [1]), (2, [1, 2, 3]), (3, [2, 3]), (4, [4, 5]))
            for img in imgs
        ],
    }
    # c2 in 3 images; c3 and c4 tie at 2 (the lower id wins); c1 in 1
    assert [c["name"] for c in detection_classes(coco, 2, Path("x"))] == ["c2", "c3"]
    with pytest.raises(ValueError, match=r"subsample\.det_classes must be a positive integer"):
        detection_classes(coco, 0, Path("x"))


def test_stratified_split_puts_every_repeated_category_on_both_sides() -> None:
    rng = np.random.default_rng(0)
    # 40 images of a common category, rarer ones mixed in: 2, 3 and 5 images each
    labels = {i: {0} for i in range(40)}
    for category, images in ((1, [0, 1]), (2, [2, 3, 4]), (3, range(5, 10))):
        for i in images:
            labels[i] = labels[i] | {category}
    train, val = stratified_split(rng, labels, 0.2)
    assert sorted(train + val) == list(range(40)) and not set(train) & set(val)
    for category in range(4):
        assert any(category in labels[i] for i in train), category
        assert any(category in labels[i] for i in val), category
    assert len(val) == round(0.2 * 40)
