"""Readers and datasets: shapes, targets that follow the transforms, and bad input rejected."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seqmtl.data.datasets import (
    CROP_RATIO,
    CROP_SCALE,
    VOC_CLASSES,
    DataError,
    build_dataset,
    cache_side,
    class_names,
)


@pytest.fixture
def mini(tiny_mini: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny mini datasets that a test may damage."""
    return Path(shutil.copytree(tiny_mini, tmp_path / "mini"))


def test_class_names_come_from_the_data(tiny_mini: Path) -> None:
    names = class_names(tiny_mini)
    assert names["seg"] == list(VOC_CLASSES)
    assert names["det"][:2] == ["person", "bicycle"] and len(names["det"]) == 10
    assert len(names["cls"]) == 10 and all(n.startswith("n0") for n in names["cls"])


@pytest.mark.parametrize("task", ["seg", "det", "cls"])
@pytest.mark.parametrize("train", [True, False])
def test_samples_are_square_floats_in_unit_range(tiny_mini: Path, task: str, train: bool) -> None:
    dataset = build_dataset(tiny_mini, task, "train" if train else "val", 64, train=train)
    assert len(dataset) == (10 if train else 5)
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert target["index"] == 0


def test_seg_val_keeps_original_masks(tiny_mini: Path) -> None:
    dataset = build_dataset(tiny_mini, "seg", "val", 64, train=False)
    for name, mask in zip(dataset.ids, dataset.original_masks, strict=True):
        png = np.array(Image.open(tiny_mini / "seg" / "SegmentationClass" / f"{name}.png"))
        assert torch.equal(mask, torch.from_numpy(png))
    values = torch.cat([m.flatten() for m in dataset.original_masks]).unique()
    assert set(values.tolist()) <= set(range(21)) | {255} and 255 in values


def test_det_boxes_follow_a_flip(tiny_mini: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = build_dataset(tiny_mini, "det", "train", 64, train=True)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros(1))  # always flip
    dataset.transform = dataset.transform.transforms[0].transforms[1]  # the flip alone
    dataset.transform.p = 1.0
    image, target = dataset[0]
    expected = dataset.boxes[0].clone()
    expected[:, [0, 2]] = dataset.cached - dataset.boxes[0][:, [2, 0]]
    torch.testing.assert_close(target["boxes"], expected)
    torch.testing.assert_close(image, torch.flip(dataset.images[0], [-1]).float() / 255)


def test_training_crops_come_from_a_cache_that_is_never_upsampled(tiny_mini: Path) -> None:
    train = build_dataset(tiny_mini, "det", "train", 64, train=True)
    plain = build_dataset(tiny_mini, "det", "train", 64, train=False)
    assert plain.cached == 64 and train.images.shape[-1] == train.cached == cache_side(64, True)
    # the narrowest crop the transform can draw still spans 64 cached pixels
    narrowest = train.cached * math.sqrt(CROP_SCALE[0] * CROP_RATIO[0])
    assert 64 <= narrowest < 65
    # the same boxes, relative to their canvas
    for cached, resized in zip(train.boxes, plain.boxes, strict=True):
        torch.testing.assert_close(cached / train.cached, resized / 64)
    image, target = train[0]
    assert image.shape == (3, 64, 64) and (target["boxes"] <= 64).all()


def test_det_val_boxes_scale_to_the_resized_image(tiny_mini: Path) -> None:
    dataset = build_dataset(tiny_mini, "det", "val", 64, train=False)
    coco = json.loads((tiny_mini / "det/annotations/instances_val.json").read_text())
    info = coco["images"][0]
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == info["id"]]
    x, y, w, h = boxes[0]
    sx, sy = 64 / info["width"], 64 / info["height"]
    torch.testing.assert_close(
        dataset[0][1]["boxes"][0], torch.tensor([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
    )
    assert dataset.original_sizes[0] == (info["height"], info["width"])


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def test_truncated_image_is_named(mini: Path) -> None:
    name = (mini / "seg/ImageSets/Segmentation/val.txt").read_text().split()[0]
    path = mini / "seg" / "JPEGImages" / f"{name}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(DataError, match=rf"{path.name}: cannot decode image"):
        build_dataset(mini, "seg", "val", 64, train=False)


def test_corrupt_image_is_named(mini: Path) -> None:
    path = _first(mini / "cls" / "train", "*/*.JPEG")
    path.write_bytes(b"definitely not a JPEG")
    with pytest.raises(DataError, match=rf"{path.name}: cannot decode image"):
        build_dataset(mini, "cls", "train", 64, train=True)


def test_mask_of_the_wrong_size_is_named(mini: Path) -> None:
    name = (mini / "seg/ImageSets/Segmentation/val.txt").read_text().split()[0]
    path = mini / "seg" / "SegmentationClass" / f"{name}.png"
    mask = Image.open(path)
    mask.resize((mask.width + 3, mask.height)).save(path)
    with pytest.raises(DataError, match=rf"{path.name}: mask size .* differs from image"):
        build_dataset(mini, "seg", "val", 64, train=False)


def test_grey_masks_are_read_like_palette_masks(mini: Path) -> None:
    name = (mini / "seg/ImageSets/Segmentation/val.txt").read_text().split()[0]
    path = mini / "seg" / "SegmentationClass" / f"{name}.png"
    palette = np.array(Image.open(path))
    Image.fromarray(palette, mode="L").save(path)
    dataset = build_dataset(mini, "seg", "val", 64, train=False)
    assert torch.equal(dataset.original_masks[0], torch.from_numpy(palette))


def test_json_that_is_not_coco_is_named(mini: Path) -> None:
    path = mini / "det" / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"instances_val\.json: not a COCO instances file"):
        build_dataset(mini, "det", "val", 64, train=False)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"instances_val\.json: not valid JSON"):
        build_dataset(mini, "det", "val", 64, train=False)


def test_missing_annotation_file_is_named(mini: Path) -> None:
    (mini / "det" / "annotations" / "instances_train.json").unlink()
    with pytest.raises(DataError, match=r"instances_train\.json: missing COCO annotation file"):
        build_dataset(mini, "det", "train", 64, train=False)


def test_annotation_of_an_unknown_image_is_named(mini: Path) -> None:
    path = mini / "det" / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["image_id"] = -7
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"instances_val\.json: annotation .* unknown image -7"):
        build_dataset(mini, "det", "val", 64, train=False)


def test_missing_split_list_and_folders_are_named(mini: Path) -> None:
    (mini / "seg/ImageSets/Segmentation/train.txt").unlink()
    with pytest.raises(DataError, match=r"train\.txt: missing VOC split list"):
        build_dataset(mini, "seg", "train", 64, train=True)
    shutil.rmtree(mini / "cls" / "val")
    with pytest.raises(DataError, match=r"cls/val: missing class-folder split"):
        build_dataset(mini, "cls", "val", 64, train=False)
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        build_dataset(mini, "depth", "val", 64, train=False)


def test_cls_labels_agree_when_a_split_lacks_a_class(mini: Path) -> None:
    train = mini / "cls" / "train"
    first, kept = sorted(p for p in train.iterdir())[:2]
    shutil.rmtree(first)
    names = class_names(mini)["cls"]
    assert first.name in names and len(names) == 10
    dataset = build_dataset(mini, "cls", "train", 64, train=False)
    kept_label = names.index(kept.name)
    assert (dataset.labels == kept_label).sum() == len(list(kept.iterdir()))
    assert (dataset.labels != names.index(first.name)).all()
