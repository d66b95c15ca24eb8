"""The tasks and their registry: each knows its loss on a batch, its metrics on a val split, and
what it reads of the one head (its output channels, from which pyramid levels, in which shape).

Every task reads its own entry of the model's output dict. Inputs are square (S x S) batches.
Primary metrics (the ones the forgetting analysis follows): seg "miou", det "map50", cls "top1";
`Task.chance` is what a model that learned nothing scores on a split.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import Tensor, nn
from torch.utils.data import DataLoader

from seqmtl.data.datasets import TaskDataset
from seqmtl.runtime import eval_mode
from seqmtl.tasks.detection import decode, detection_loss, pyramid_points
from seqmtl.tasks.metrics import IGNORE_INDEX, ConfusionMatrix, coco_detection_metrics, miou, top1

Targets = list[dict[str, Any]]


class Task:
    """A task's loss and evaluation; `primary` names the metric that forgetting follows.

    What it reads of the head (class-level, used by `seqmtl.models.model.UnifiedModel`):
    `channels` of the head's output, on the FPN's levels fused at stride 8 or also, the same
    head's own channels, on every coarser level (`levels`), turned into the task's output by
    `output`; `init_bias` sets the start of its output biases."""

    name: str
    primary: str
    levels = False

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @staticmethod
    def channels(num_classes: int) -> int:
        """The head's output channels of a task with `num_classes` classes."""
        return num_classes

    @staticmethod
    def output(maps: list[Tensor]) -> Tensor:
        """The task's output from its channels of the head on the fused map (and, with `levels`,
        on each coarser level); default: the (B, C, H/8, W/8) map itself."""
        return maps[0]

    @staticmethod
    def init_bias(bias: Tensor) -> None:
        """Initialise the task's output biases in place (default: as the conv initialised them)."""

    def loss(self, outputs: dict[str, Tensor], targets: Targets, size: int) -> dict[str, Tensor]:
        """Named loss components on a batch of S x S images (their sum is the task's loss)."""
        raise NotImplementedError

    def chance(self, dataset: TaskDataset) -> float:
        """The primary metric on `dataset` of a model that learned nothing about the task."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
        """Metrics on the loader's (unshuffled, unaugmented) split; restores the model's mode."""
        with eval_mode(model):
            for images, targets in loader:
                self.accumulate(model(images.to(device), tasks=(self.name,)), targets, loader)
        return self.summarise(loader.dataset)

    def accumulate(self, outputs: dict[str, Tensor], targets: Targets, loader: DataLoader) -> None:
        raise NotImplementedError

    def summarise(self, dataset: TaskDataset) -> dict[str, float]:
        raise NotImplementedError

    def per_image(self) -> dict[str, Any]:
        """The last evaluation's per-image statistics, in the split's order (JSON-ready): what
        `seqmtl.analysis.bootstrap` rescores resampled image sets from."""
        raise NotImplementedError


class Segmentation(Task):
    """Pixel-wise cross-entropy (255 ignored) on the stride-8 logits upsampled bilinearly to the
    S x S masks subsampled by `loss_stride` (every k-th pixel from the k // 2-th, each row and
    column: the pixel nearest the centre of its k x k block); mIoU from one confusion matrix at
    each mask's original resolution (the logits upsampled bilinearly to it before the argmax)."""

    name, primary = "seg", "miou"

    def __init__(self, num_classes: int, loss_stride: int = 1) -> None:
        super().__init__(num_classes)
        if isinstance(loss_stride, bool) or not isinstance(loss_stride, int) or loss_stride < 1:
            raise ValueError(f"train.seg_loss_stride must be a positive integer, got {loss_stride}")
        self.loss_stride = loss_stride

    def loss(self, outputs: dict[str, Tensor], targets: Targets, size: int) -> dict[str, Tensor]:
        k = self.loss_stride
        masks = torch.stack([t["mask"][k // 2 :: k, k // 2 :: k] for t in targets])
        masks = masks.to(outputs["seg"].device)
        logits = F.interpolate(
            outputs["seg"], size=masks.shape[-2:], mode="bilinear", align_corners=False
        )
        # One row of class logits per pixel: a view of the model's channels_last logits, so the
        # log-softmax runs along contiguous memory (the 4-D form first copies them to NCHW).
        rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        return {"ce": F.cross_entropy(rows, masks.reshape(-1), ignore_index=IGNORE_INDEX)}

    def chance(self, dataset: TaskDataset) -> float:
        """mIoU of predicting the most frequent class everywhere: its pixel share over the
        number of classes present in the masks."""
        counts = torch.zeros(256, dtype=torch.int64)
        for mask in dataset.original_masks:
            counts += torch.bincount(mask.flatten().long(), minlength=256)
        counts = counts[: self.num_classes]
        return (counts.max() / counts.sum()).item() / int((counts > 0).sum())

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
        self.confusions: list[Tensor] = []
        return super().evaluate(model, loader, device)

    def accumulate(self, outputs: dict[str, Tensor], targets: Targets, loader: DataLoader) -> None:
        for logits, target in zip(outputs["seg"], targets, strict=True):
            mask = loader.dataset.original_masks[target["index"]]
            up = F.interpolate(logits[None], size=mask.shape, mode="bilinear", align_corners=False)
            confusion = ConfusionMatrix(self.num_classes)
            confusion.update(up[0].argmax(0).cpu(), mask)
            self.confusions.append(confusion.matrix)

    def summarise(self, dataset: TaskDataset) -> dict[str, float]:
        result = miou(torch.stack(self.confusions).sum(0))
        return {"miou": result["miou"], "pixel_acc": result["pixel_acc"]}

    def per_image(self) -> dict[str, Any]:
        """Each image's confusion matrix (rows target, columns prediction), flattened."""
        return {"confusion": [c.flatten().tolist() for c in self.confusions]}


class Detection(Task):
    """FCOS losses over the pyramid's levels (`seqmtl.tasks.detection`); COCOeval (bbox) on the
    split's annotation file with boxes mapped back to original image coordinates; P / R / F1 at
    IoU 0.5 over detections scoring at least `score_threshold`. Decoding keeps scores above
    `decode_threshold` (0.05, as COCO evaluations usually do) so that the AP curve is complete."""

    name, primary = "det", "map50"
    levels = True
    prior = 0.01

    @staticmethod
    def channels(num_classes: int) -> int:
        """4 box distances, 1 centerness, one logit per class."""
        return 5 + num_classes

    @staticmethod
    def output(maps: list[Tensor]) -> Tensor:
        """(B, N, 4 + 1 + C) over the N locations of every level, finest first."""
        return torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)

    @classmethod
    def init_bias(cls, bias: Tensor) -> None:
        """Centerness and class logits start at the prior probability 0.01 (as in RetinaNet and
        FCOS), so the focal loss does not begin by shouting at every location."""
        nn.init.constant_(bias[4:], -math.log((1 - cls.prior) / cls.prior))

    def __init__(
        self, num_classes: int, score_threshold: float = 0.5, decode_threshold: float = 0.05
    ) -> None:
        super().__init__(num_classes)
        self.score_threshold = score_threshold
        self.decode_threshold = decode_threshold

    def loss(self, outputs: dict[str, Tensor], targets: Targets, size: int) -> dict[str, Tensor]:
        raw = outputs["det"]
        moved = [{k: t[k].to(raw.device) for k in ("boxes", "labels")} for t in targets]
        return detection_loss(raw, moved, pyramid_points(size, raw.device), self.num_classes)

    def chance(self, dataset: TaskDataset) -> float:
        """Boxes placed without looking at the image score (near) zero AP."""
        return 0.0

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
        self.detections: list[dict[str, Any]] = []
        return super().evaluate(model, loader, device)

    def accumulate(self, outputs: dict[str, Tensor], targets: Targets, loader: DataLoader) -> None:
        raw = outputs["det"]
        size = loader.dataset.size
        results = decode(raw, pyramid_points(size, raw.device), size, self.decode_threshold)
        dataset = loader.dataset
        for result, target in zip(results, targets, strict=True):
            h, w = dataset.original_sizes[target["index"]]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32) / size
            boxes = (result["boxes"].cpu() * scale).tolist()
            for (x1, y1, x2, y2), score, label in zip(
                boxes, result["scores"].tolist(), result["labels"].tolist(), strict=True
            ):
                self.detections.append(
                    {
                        "image_id": dataset.image_ids[target["index"]],
                        "category_id": dataset.category_ids[label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )

    def summarise(self, dataset: TaskDataset) -> dict[str, float]:
        self.image_ids = list(dataset.image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(dataset.annotation_file))
        return coco_detection_metrics(gt, self.detections, self.score_threshold)

    def per_image(self) -> dict[str, Any]:
        """The split's image ids and every detection (COCO results format, original pixels)."""
        return {"image_ids": self.image_ids, "detections": self.detections}


class Classification(Task):
    """Cross-entropy on the pooled class logits; top-1 on val."""

    name, primary = "cls", "top1"

    @staticmethod
    def output(maps: list[Tensor]) -> Tensor:
        """(B, C) class logits: the map averaged over its locations."""
        return maps[0].mean((2, 3))

    def loss(self, outputs: dict[str, Tensor], targets: Targets, size: int) -> dict[str, Tensor]:
        logits = outputs["cls"]
        labels = torch.stack([t["label"] for t in targets]).to(logits.device)
        return {"ce": F.cross_entropy(logits, labels)}

    def chance(self, dataset: TaskDataset) -> float:
        """Top-1 of always answering the most frequent class."""
        return (torch.bincount(dataset.labels).max() / len(dataset.labels)).item()

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
        self.logits: list[Tensor] = []
        self.labels: list[Tensor] = []
        return super().evaluate(model, loader, device)

    def accumulate(self, outputs: dict[str, Tensor], targets: Targets, loader: DataLoader) -> None:
        self.logits.append(outputs["cls"].cpu())
        self.labels += [t["label"] for t in targets]

    def summarise(self, dataset: TaskDataset) -> dict[str, float]:
        return {"top1": top1(torch.cat(self.logits), torch.stack(self.labels))}

    def per_image(self) -> dict[str, Any]:
        """Whether each image's top class is its label (1) or not (0)."""
        right = torch.cat(self.logits).argmax(-1) == torch.stack(self.labels)
        return {"correct": right.int().tolist()}


REGISTRY: dict[str, type[Task]] = {t.name: t for t in (Segmentation, Detection, Classification)}
"""Every task by name, in `seqmtl.config.TASKS`' order."""


def build_tasks(
    num_classes: dict[str, int], score_threshold: float, seg_loss_stride: int = 1
) -> dict[str, Task]:
    """Every task of `num_classes` (its class counts, from the data) keyed by name, with the
    training params that concern it."""
    options = {"seg": {"loss_stride": seg_loss_stride}, "det": {"score_threshold": score_threshold}}
    return {t: REGISTRY[t](n, **options.get(t, {})) for t, n in num_classes.items()}


def evaluate_all(
    model: nn.Module, tasks: dict[str, Task], loaders: dict[str, DataLoader], device: torch.device
) -> dict[str, dict[str, float]]:
    """Every loader's task evaluated on its split."""
    return {t: tasks[t].evaluate(model, loader, device) for t, loader in loaders.items()}
