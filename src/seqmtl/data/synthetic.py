"""Seeded synthetic datasets written in the official VOC, COCO and Imagenette layouts.

Every image is a textured, weakly tinted background with several shapes on it. A shape's class is
the pair (outline, hue): VOC uses 4 outlines x 5 hues = 20 classes, COCO and Imagenette 2 other
outlines each x 5 hues = 10 classes, so hue alone never decides a class. Later shapes occlude
earlier ones, and VOC masks carry the 255 "void" border around every object, as the real ones do.
The three datasets draw from independent random streams, so their images are disjoint.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from seqmtl.data.datasets import VOC_CLASSES
from seqmtl.files import atomic_dir

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "ring",
    "arrow",
    "diamond",
    "crescent",
)
HUES = (0.0, 0.15, 0.33, 0.6, 0.83)
VOC_SHAPES, COCO_SHAPES, IMAGENETTE_SHAPES = (0, 1, 2, 3), (4, 5), (6, 7)
COCO_FIRST_TEN = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
)
IMAGENETTE_WNIDS = (
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as in the devkit."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of radius r centred at (cx, cy), rotated by `angle` radians."""

    def ring(n: int, radii: list[float], phase: float = 0.0) -> list[tuple[float, float]]:
        return [
            (
                radii[i % len(radii)] * math.cos(phase + 2 * math.pi * i / n),
                radii[i % len(radii)] * math.sin(phase + 2 * math.pi * i / n),
            )
            for i in range(n)
        ]

    outlines = {
        "circle": ring(32, [1.0]),
        "square": ring(4, [1.0], math.pi / 4),
        "triangle": ring(3, [1.0], -math.pi / 2),
        "diamond": ring(4, [1.0, 0.55]),
        "cross": [
            (0.3, 1),
            (0.3, 0.3),
            (1, 0.3),
            (1, -0.3),
            (0.3, -0.3),
            (0.3, -1),
            (-0.3, -1),
            (-0.3, -0.3),
            (-1, -0.3),
            (-1, 0.3),
            (-0.3, 0.3),
            (-0.3, 1),
        ],
        "star": ring(10, [1.0, 0.42], -math.pi / 2),
        "hexagon": ring(6, [1.0]),
        "arrow": [(1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3), (-1, -0.3), (0.1, -0.3), (0.1, -0.8)],
        "crescent": ring(24, [1.0])[:13]
        + [(0.7 * x, 0.35 * y) for x, y in ring(24, [1.0])[12::-1]],
    }
    points = outlines["circle"] if shape == "ring" else outlines[shape]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def _shape_mask(
    shape: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float
) -> np.ndarray:
    """Boolean (H, W) mask of one shape."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(_polygon(shape, cx, cy, r, angle), fill=1)
    if shape == "ring":
        draw.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=0)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A low-saturation gradient with random stripes and noise, float RGB in [0, 255]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(70, 190) + rng.uniform(-20, 20, size=3)
    tilt = rng.uniform(-0.4, 0.4, size=(2, 3))
    img = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    freq, phase, theta = (
        rng.uniform(0.05, 0.3),
        rng.uniform(0, 2 * math.pi),
        rng.uniform(0, math.pi),
    )
    stripes = np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    img += rng.uniform(5, 25) * stripes[..., None]
    img += rng.normal(0, 8, size=img.shape)
    return img


def _colour(rng: np.random.Generator, hue: int) -> np.ndarray:
    """A saturated RGB colour around HUES[hue] (jittered)."""
    h = (HUES[hue] + rng.uniform(-0.03, 0.03)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0))) * 255


def _object(shapes: tuple[int, ...], label: int) -> tuple[int, int]:
    """(shape, hue) of class `label` (0-based) among len(shapes) x len(HUES) classes."""
    return shapes[label // len(HUES)], label % len(HUES)


def render(
    rng: np.random.Generator,
    w: int,
    h: int,
    objects: list[tuple[int, int]],
    min_scale: float,
    max_scale: float,
) -> tuple[Image.Image, np.ndarray]:
    """Draw `objects` (shape index, hue index) in order; return the image and an instance map.

    The instance map holds, per pixel, the index of the visible object + 1 (0 = background).
    """
    img = _background(rng, w, h)
    instances = np.zeros((h, w), dtype=np.int32)
    for k, (shape, hue) in enumerate(objects):
        r = rng.uniform(min_scale, max_scale) * min(w, h) / 2
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        mask = _shape_mask(SHAPES[shape], (w, h), cx, cy, r, rng.uniform(0, 2 * math.pi))
        img[mask] = _colour(rng, hue) + rng.normal(0, 10, size=(int(mask.sum()), 3))
        instances[mask] = k + 1
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), instances


def _size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """A (width, height) around `size` with a varied aspect ratio."""
    return int(size * rng.uniform(0.8, 1.25)), int(size * rng.uniform(0.8, 1.25))


def _void_border(instances: np.ndarray) -> np.ndarray:
    """Pixels where the instance id changes within a 3x3 neighbourhood (VOC's 255 outline)."""
    padded = np.pad(instances, 1, mode="edge")
    border = np.zeros(instances.shape, dtype=bool)
    h, w = instances.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            border |= padded[dy : dy + h, dx : dx + w] != instances
    return border


def write_voc(root: Path, rng: np.random.Generator, n_train: int, n_val: int, size: int) -> None:
    """VOCdevkit/VOC2012 with JPEGImages, palette SegmentationClass PNGs and ImageSets lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    palette = voc_palette()
    names = {"train": [], "val": []}
    for i in range(n_train + n_val):
        name = f"2012_{i:06d}"
        names["train" if i < n_train else "val"].append(name)
        classes = rng.integers(1, len(VOC_CLASSES), size=rng.integers(1, 5))
        objects = [_object(VOC_SHAPES, int(c) - 1) for c in classes]
        image, instances = render(rng, *_size(rng, size), objects, 0.25, 0.6)
        lookup = np.concatenate([[0], classes]).astype(np.uint8)
        mask = lookup[instances]
        mask[_void_border(instances)] = 255
        image.save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{name}.png")
    lists = voc / "ImageSets" / "Segmentation"
    for split, ids in (*names.items(), ("trainval", names["train"] + names["val"])):
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in ids))


def write_coco(root: Path, rng: np.random.Generator, n_images: int, size: int) -> None:
    """val2017/*.jpg and annotations/instances_val2017.json with the first ten COCO categories."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i in range(n_images):
        image_id = 100000 + i
        w, h = _size(rng, size)
        labels = rng.integers(0, len(COCO_FIRST_TEN), size=rng.integers(1, 6))
        image, instances = render(
            rng, w, h, [_object(COCO_SHAPES, int(c)) for c in labels], 0.15, 0.45
        )
        image.save(root / "val2017" / f"{image_id:012d}.jpg", quality=90)
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h}
        )
        for k, label in enumerate(labels):
            ys, xs = np.nonzero(instances == k + 1)
            if len(xs) < 20:
                continue
            box = [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": box,
                    "area": float(len(xs)),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": n, "supercategory": "synthetic"} for i, n in enumerate(COCO_FIRST_TEN)
    ]
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "info": {"description": "synthetic"},
        "licenses": [],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))


def write_imagenette(
    root: Path, rng: np.random.Generator, n_train: int, n_val: int, size: int
) -> None:
    """imagenette2-160/{train,val}/<wnid>/*.JPEG: the class is that of the largest shape."""
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            label = i % len(IMAGENETTE_WNIDS)
            folder = root / "imagenette2-160" / split / IMAGENETTE_WNIDS[label]
            folder.mkdir(parents=True, exist_ok=True)
            distractors = [
                (int(rng.integers(len(SHAPES))), int(rng.integers(len(HUES))))
                for _ in range(rng.integers(0, 3))
            ]
            w, h = _size(rng, size)
            image, _ = render(rng, w, h, distractors, 0.1, 0.2)
            main, instances = render(rng, w, h, [_object(IMAGENETTE_SHAPES, label)], 0.5, 0.8)
            shown = np.where((instances > 0)[..., None], np.asarray(main), np.asarray(image))
            Image.fromarray(shown).save(
                folder / f"{IMAGENETTE_WNIDS[label]}_{split}{i:05d}.JPEG", quality=90
            )


def generate(raw_dir: Path, seed: int, n_train: int, n_val: int, size: int) -> None:
    """Write all three synthetic datasets under raw_dir (voc/, coco/, imagenette/), atomically."""
    streams = np.random.SeedSequence(seed).spawn(3)
    with atomic_dir(raw_dir) as tmp:
        write_voc(tmp / "voc", np.random.default_rng(streams[0]), n_train, n_val, size)
        write_coco(tmp / "coco", np.random.default_rng(streams[1]), n_train + n_val, size)
        write_imagenette(
            tmp / "imagenette", np.random.default_rng(streams[2]), n_train, n_val, size
        )
