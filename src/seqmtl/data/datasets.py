"""Readers of the official layouts and the three task datasets, decoded once and kept in memory.

Every sample's image is a float tensor in [0, 1] of shape (3, S, S); normalisation belongs to the
backbone. Training images are cached at `cache_side(S)`, large enough that the smallest random
crop is never upsampled, and pass through torchvision.transforms.v2 (scale crop, resize to S,
flip) so masks and boxes follow the image; validation samples are only resized to S, and keep
what is needed to score them at the original resolution (the mask, or the original size for boxes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seqmtl.config import TASKS, Config

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
__all__ = [
    "TASKS",
    "VOC_CLASSES",
    "DataError",
    "build_dataset",
    "class_names",
    "collate",
    "task_image_sizes",
]


class DataError(ValueError):
    """Bad input data; the message names the offending file or folder."""


def task_order(mapping: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """`mapping` with its task keys in `order` (the sequence's), then its other keys: results
    read back from key-sorted JSON are reported in the order the tasks were learned."""
    return {t: mapping[t] for t in order if t in mapping} | {
        key: value for key, value in mapping.items() if key not in order
    }


def read_image(path: Path, mask: bool = False) -> Image.Image:
    """Decode an image fully, as RGB; a `mask` (palette or grey PNG) as it is. Truncated or
    corrupt files raise DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy() if mask else image.convert("RGB")
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found") from error
    except OSError as error:
        raise DataError(f"{path}: cannot decode image ({error})") from error


def read_split_list(voc: Path, split: str) -> list[str]:
    """Image ids of a VOC ImageSets/Segmentation/<split>.txt list."""
    path = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path}: missing VOC split list")
    return path.read_text().split()


def load_coco(path: Path) -> dict[str, Any]:
    """A COCO instances JSON, checked for its images / annotations / categories lists."""
    if not path.is_file():
        raise DataError(f"{path}: missing COCO annotation file")
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{path}: not a COCO instances file (needs images, annotations, categories)"
        )
    return coco


def class_folders(root: Path) -> list[Path]:
    """The sorted class sub-folders of an ImageFolder-style split."""
    if not root.is_dir():
        raise DataError(f"{root}: missing class-folder split")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root}: no class folders")
    return folders


def cls_classes(root: Path) -> list[str]:
    """Class names of an ImageFolder-style dataset: its train and val class folders, sorted.

    Both splits count, so that labels agree between them even when a small selection leaves a
    class out of one split."""
    return sorted({p.name for split in ("train", "val") for p in class_folders(root / split)})


def class_names(mini: Path) -> dict[str, list[str]]:
    """Class names of each task, read from the mini layouts."""
    categories = load_coco(mini / "det" / "annotations" / "instances_train.json")["categories"]
    return {
        "seg": list(VOC_CLASSES),
        "det": [c["name"] for c in categories],
        "cls": cls_classes(mini / "cls"),
    }


CROP_SCALE = (0.5, 1.0)  # area fraction of the random crop
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio


def cache_side(size: int, train: bool) -> int:
    """Side of the cached images: S for validation; for training, the side at which the
    narrowest random crop (area fraction CROP_SCALE[0], aspect CROP_RATIO[0]) still spans S."""
    if not train:
        return size
    return math.ceil(size / math.sqrt(CROP_SCALE[0] * CROP_RATIO[0]))


def _resized(image: Image.Image, size: int) -> Tensor:
    """(3, size, size) uint8 tensor of a bilinear (antialiased) resize."""
    return F.pil_to_tensor(image.resize((size, size), Image.BILINEAR))


class TaskDataset(Dataset):
    """Base: `images` is a uint8 (N, 3, C, C) cache filled once, C = `cache_side(size, train)`;
    samples are S x S, S = `size`; subclasses add targets."""

    task: str

    def __init__(self, size: int, train: bool) -> None:
        self.size = size
        self.train = train
        self.cached = cache_side(size, train)
        self.images: Tensor = torch.empty(0, 3, self.cached, self.cached, dtype=torch.uint8)
        self.transform: Callable | None = None
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def view(self, i: int, *inputs: Any) -> Any:
        """`inputs` of sample i through `transform` (as they are without one). Its random draws
        come from (seed, epoch, i) alone, so a sample's augmentation in an epoch does not depend
        on the order in which samples are loaded, nor on the process that loads them."""
        if self.transform is None:
            return inputs if len(inputs) > 1 else inputs[0]
        state = np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1, np.uint64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(state[0]))
            return self.transform(*inputs)

    def augment(self) -> Callable:
        """Random scale crop of the cached image resized to S, and flip, shared by all tasks
        (masks and boxes follow)."""
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.size, CROP_SCALE, CROP_RATIO, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )


class SegDataset(TaskDataset):
    """VOC2012 segmentation: image + mask (255 = ignore); val keeps the original-size masks."""

    task = "seg"

    def __init__(self, voc: Path, split: str, size: int, train: bool) -> None:
        super().__init__(size, train)
        self.ids = read_split_list(voc, split)
        images, masks, self.original_masks = [], [], []
        for name in self.ids:
            image = read_image(voc / "JPEGImages" / f"{name}.jpg")
            mask_path = voc / "SegmentationClass" / f"{name}.png"
            mask = read_image(mask_path, mask=True)
            if mask.mode not in ("P", "L"):
                raise DataError(f"{mask_path}: mask must be a palette or grey PNG, got {mask.mode}")
            if mask.size != image.size:
                raise DataError(
                    f"{mask_path}: mask size {mask.size} differs from image {image.size}"
                )
            images.append(_resized(image, self.cached))
            side = (self.cached, self.cached)
            masks.append(torch.from_numpy(np.array(mask.resize(side, Image.NEAREST))))
            self.original_masks.append(torch.from_numpy(np.array(mask, dtype=np.uint8)))
        self.images = torch.stack(images) if images else self.images
        self.masks = torch.stack(masks) if masks else torch.empty(0, *side, dtype=torch.uint8)
        self.transform = self.augment() if train else None

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, mask = self.view(i, tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.masks[i]))
        return F.to_dtype(image, torch.float32, scale=True), {"mask": mask.long(), "index": i}


class DetDataset(TaskDataset):
    """COCO-format detection: image + xyxy boxes (resized coordinates) + contiguous labels."""

    task = "det"

    def __init__(self, root: Path, split: str, size: int, train: bool) -> None:
        super().__init__(size, train)
        self.annotation_file = root / "annotations" / f"instances_{split}.json"
        coco = load_coco(self.annotation_file)
        self.category_ids = [c["id"] for c in coco["categories"]]
        label_of = {cid: k for k, cid in enumerate(self.category_ids)}
        per_image: dict[int, list] = {i["id"]: [] for i in coco["images"]}
        for a in coco["annotations"]:
            if a.get("image_id") not in per_image:
                raise DataError(
                    f"{self.annotation_file}: annotation {a.get('id')} refers to unknown image "
                    f"{a.get('image_id')}"
                )
            if not a.get("iscrowd", 0) and a["category_id"] in label_of:
                per_image[a["image_id"]].append(a)
        images, self.boxes, self.labels, self.image_ids, self.original_sizes = [], [], [], [], []
        for info in coco["images"]:
            image = read_image(root / split / info["file_name"])
            w, h = image.size
            images.append(_resized(image, self.cached))
            xywh = torch.tensor([a["bbox"] for a in per_image[info["id"]]], dtype=torch.float32)
            xyxy = box_convert(xywh.reshape(-1, 4), "xywh", "xyxy")
            self.boxes.append(xyxy * torch.tensor([w, h, w, h]).reciprocal() * self.cached)
            self.labels.append(
                torch.tensor(
                    [label_of[a["category_id"]] for a in per_image[info["id"]]], dtype=torch.long
                )
            )
            self.image_ids.append(info["id"])
            self.original_sizes.append((h, w))
        self.images = torch.stack(images) if images else self.images
        self.transform = v2.Compose([self.augment(), v2.SanitizeBoundingBoxes()]) if train else None

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image = tv_tensors.Image(self.images[i])
        canvas = (self.cached, self.cached)
        boxes = tv_tensors.BoundingBoxes(self.boxes[i], format="XYXY", canvas_size=canvas)
        image, target = self.view(i, image, {"boxes": boxes, "labels": self.labels[i]})
        return F.to_dtype(image, torch.float32, scale=True), {
            "boxes": target["boxes"].as_subclass(Tensor),
            "labels": target["labels"],
            "index": i,
        }


class ClsDataset(TaskDataset):
    """Imagenette-style class folders: image + class index."""

    task = "cls"

    def __init__(self, root: Path, split: str, size: int, train: bool) -> None:
        super().__init__(size, train)
        images, labels = [], []
        label_of = {name: k for k, name in enumerate(cls_classes(root))}
        for folder in class_folders(root / split):
            for path in sorted(folder.glob("*.JPEG")):
                images.append(_resized(read_image(path), self.cached))
                labels.append(label_of[folder.name])
        self.images = torch.stack(images) if images else self.images
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.transform = self.augment() if train else None

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image = self.view(i, tv_tensors.Image(self.images[i]))
        return F.to_dtype(image, torch.float32, scale=True), {"label": self.labels[i], "index": i}


def task_image_sizes(params: Config, tasks: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Each task's image side (`tasks.<task>.image_size`): a task is trained, replayed, evaluated
    and analysed at its own size in every stage."""
    return {t: params.tasks[t].image_size for t in tasks}


READERS: dict[str, type[TaskDataset]] = {"seg": SegDataset, "det": DetDataset, "cls": ClsDataset}
"""Each task's dataset reader, reading data/mini/<task>/."""


def build_dataset(mini: Path, task: str, split: str, size: int, train: bool) -> TaskDataset:
    """The mini dataset of `task` for `split`, resized to size x size."""
    if task not in READERS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return READERS[task](mini / task, split, size, train)


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stack images; keep per-sample targets as a list (boxes differ in count)."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]
