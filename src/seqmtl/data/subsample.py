"""Seeded selection of the mini datasets from the raw official layouts.

The mini layouts are the official ones again, so one reader serves raw and mini data:
seg/ is a VOC2012 folder, det/ holds train/, val/ and annotations/instances_{split}.json,
cls/ holds {train,val}/<wnid>/ folders.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from seqmtl.data.datasets import VOC_CLASSES, DataError, class_folders, load_coco, read_split_list
from seqmtl.files import atomic_dir

log = logging.getLogger(__name__)


def _take(rng: np.random.Generator, items: list, n: int, what: str) -> list:
    """n items drawn without replacement (sorted input, so the draw depends on the seed only)."""
    if len(items) < n:
        log.warning("%s: only %d eligible images, %d asked; taking all", what, len(items), n)
        n = len(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def subsample_seg(
    src: Path,
    dst: Path,
    rngs: tuple[np.random.Generator, np.random.Generator],
    n_train: int,
    n_val: int,
) -> dict:
    """Copy n_train / n_val VOC images (drawn with rngs[0] / rngs[1]) with their masks; return
    counts and images per class."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (dst / sub).mkdir(parents=True)
    stats = {}
    for split, n, rng in (("train", n_train, rngs[0]), ("val", n_val, rngs[1])):
        ids = _take(rng, sorted(read_split_list(src, split)), n, f"seg {split}")
        histogram: Counter = Counter()
        for name in ids:
            shutil.copyfile(src / "JPEGImages" / f"{name}.jpg", dst / "JPEGImages" / f"{name}.jpg")
            mask_path = src / "SegmentationClass" / f"{name}.png"
            shutil.copyfile(mask_path, dst / "SegmentationClass" / f"{name}.png")
            values = np.unique(np.asarray(Image.open(mask_path)))
            histogram.update(VOC_CLASSES[v] for v in values if v < len(VOC_CLASSES))
        (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{n}\n" for n in ids)
        )
        stats[split] = {"images": len(ids), "images_per_class": dict(sorted(histogram.items()))}
    return stats


def detection_classes(coco: dict, classes: int | list[str], source: Path) -> list[dict]:
    """The kept COCO categories: the named ones in their order, or, for an integer k, the k
    categories present in the most images (ties broken by category id) in category-id order."""
    if isinstance(classes, bool) or not isinstance(classes, int | list) or not classes:
        raise ValueError(
            f"subsample.det_classes must be a positive integer or a list of names, got {classes!r}"
        )
    if isinstance(classes, int):
        images: dict[int, set] = {c["id"]: set() for c in coco["categories"]}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0) and a["category_id"] in images:
                images[a["category_id"]].add(a["image_id"])
        ranked = sorted(images, key=lambda c: (-len(images[c]), c))
        kept = set(ranked[:classes])
        return [c for c in sorted(coco["categories"], key=lambda c: c["id"]) if c["id"] in kept]
    by_name = {c["name"]: c for c in coco["categories"]}
    missing = [n for n in classes if n not in by_name]
    if missing:
        raise DataError(f"subsample.det_classes: {missing} are not COCO categories in {source}")
    return [by_name[n] for n in classes]


def stratified_split(
    rng: np.random.Generator, labels: dict[int, set[int]], val_fraction: float
) -> tuple[list[int], list[int]]:
    """Seeded train / val split of images (id -> the kept category ids they hold), stratified by
    each image's rarest category, with round(fraction x images) images in val.

    Each group of images sharing a rarest category sends floor(fraction x size) of its images to
    val, but at least one and at most size - 1 when it has two or more; the largest remainders
    (then the smallest) settle the total. Every category in two or more images of its own group
    thus has boxes on both sides."""
    frequency = Counter(c for held in labels.values() for c in held)
    groups: dict[int, list[int]] = {}
    for image in sorted(labels):
        rarest = min(labels[image], key=lambda c: (frequency[c], c))
        groups.setdefault(rarest, []).append(image)
    share = {g: val_fraction * len(m) for g, m in groups.items()}
    quota = {g: min(max(int(share[g]), 1), len(m) - 1) for g, m in groups.items()}
    total = round(val_fraction * len(labels))
    while sum(quota.values()) < total:
        g = max((g for g in groups if quota[g] < len(groups[g]) - 1), default=None,
                key=lambda g: (share[g] - quota[g], -g))  # fmt: skip
        if g is None:
            break
        quota[g] += 1
    while sum(quota.values()) > total:
        g = min((g for g in groups if quota[g] > 1), default=None,
                key=lambda g: (share[g] - quota[g], g))  # fmt: skip
        if g is None:
            break
        quota[g] -= 1
    train, val = [], []
    for g in sorted(groups):
        members = [groups[g][i] for i in rng.permutation(len(groups[g]))]
        val += members[: quota[g]]
        train += members[quota[g] :]
    return sorted(train), sorted(val)


def subsample_det(
    src: Path,
    dst: Path,
    rngs: tuple[np.random.Generator, np.random.Generator],
    n_train: int,
    n_val: int,
    classes: int | list[str],
) -> dict:
    """Split COCO val2017 images holding >= 1 object of the kept classes (`detection_classes`)
    into mini train / val.

    With one generator (rngs[0] is rngs[1]): a draw of n_train + n_val eligible images, split by
    `stratified_split` in the ratio n_val / (n_train + n_val). With two: val is first split off
    all eligible images by `stratified_split` with rngs[1], then train drawn from the rest with
    rngs[0], so the val set does not depend on n_train."""
    coco = load_coco(src / "annotations" / "instances_val2017.json")
    categories = detection_classes(coco, classes, src)
    keep = {c["id"] for c in categories}
    annotations = [a for a in coco["annotations"] if a["category_id"] in keep]
    held: dict[int, set[int]] = {}
    for a in annotations:
        if not a.get("iscrowd", 0):
            held.setdefault(a["image_id"], set()).add(a["category_id"])
    if rngs[0] is rngs[1]:
        chosen = _take(rngs[0], sorted(held), n_train + n_val, "det train+val")
        splits = stratified_split(rngs[0], {i: held[i] for i in chosen}, n_val / (n_train + n_val))
    else:
        n_val = min(n_val, len(held) - 1)
        rest, val = stratified_split(rngs[1], held, n_val / len(held))
        splits = _take(rngs[0], rest, n_train, "det train"), val
    images = {i["id"]: i for i in coco["images"]}
    (dst / "annotations").mkdir(parents=True)
    stats = {}
    for split, ids in zip(("train", "val"), splits, strict=True):
        (dst / split).mkdir()
        wanted = set(ids)
        split_annotations = [a for a in annotations if a["image_id"] in wanted]
        for image_id in ids:
            name = images[image_id]["file_name"]
            shutil.copyfile(src / "val2017" / name, dst / split / name)
        mini = {
            "images": [images[i] for i in ids],
            "annotations": split_annotations,
            "categories": categories,
        }
        (dst / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(mini, sort_keys=True)
        )
        names = {c["id"]: c["name"] for c in categories}
        histogram = Counter(names[a["category_id"]] for a in split_annotations)
        stats[split] = {
            "images": len(ids),
            "boxes": len(split_annotations),
            "boxes_per_class": dict(sorted(histogram.items())),
        }
    return stats


def subsample_cls(
    src: Path,
    dst: Path,
    rngs: tuple[np.random.Generator, np.random.Generator],
    n_train: int,
    n_val: int,
) -> dict:
    """Class-balanced selection of n_train / n_val images (drawn with rngs[0] / rngs[1]) from the
    Imagenette class folders.

    A class left without images in a split gets no folder there: an empty folder would not
    survive a round trip through DVC's cache."""
    stats = {}
    for split, n, rng in (("train", n_train, rngs[0]), ("val", n_val, rngs[1])):
        folders = class_folders(src / split)
        histogram = {}
        for k, folder in enumerate(folders):
            quota = n // len(folders) + (k < n % len(folders))
            files = _take(rng, sorted(folder.glob("*.JPEG")), quota, f"cls {split}/{folder.name}")
            if files:
                (dst / split / folder.name).mkdir(parents=True)
            for path in files:
                shutil.copyfile(path, dst / split / folder.name / path.name)
            histogram[folder.name] = len(files)
        stats[split] = {"images": sum(histogram.values()), "images_per_class": histogram}
    return stats


def _streams(seed: int, first: int = 0) -> list[np.random.Generator]:
    """One generator per task (seg, det, cls): `seed`'s spawned streams first to first + 2."""
    children = np.random.SeedSequence(seed).spawn(first + 3)[first:]
    return [np.random.default_rng(s) for s in children]


def subsample(
    raw: Path,
    mini: Path,
    seed: int,
    n_train: int,
    n_val: int,
    det_classes: int | list[str],
    val_seed: int | None = None,
) -> dict:
    """Write the three mini datasets under `mini` atomically; return the statistics.

    Without `val_seed`, each task draws train then val from one stream of `seed`. With it, the
    val sets are drawn first from streams of `val_seed` alone, so they stay the same for every
    seed and n_train (a learning curve's fixed val set), and train from the rest with `seed`."""
    if n_train <= 0 or n_val <= 0:
        raise ValueError(f"subsample.n_train / n_val must be positive, got {n_train} / {n_val}")
    train = _streams(seed)
    val = train if val_seed is None else _streams(val_seed, first=3)
    with atomic_dir(mini) as tmp:
        return {
            "seg": subsample_seg(
                raw / "voc" / "VOCdevkit" / "VOC2012",
                tmp / "seg",
                (train[0], val[0]),
                n_train,
                n_val,
            ),
            "det": subsample_det(
                raw / "coco", tmp / "det", (train[1], val[1]), n_train, n_val, det_classes
            ),
            "cls": subsample_cls(
                raw / "imagenette" / "imagenette2-160",
                tmp / "cls",
                (train[2], val[2]),
                n_train,
                n_val,
            ),
        }
