"""Benchmark: parameters, inference latency, training throughput and the data path, per backbone.

    python -m seqmtl.bench [--backbones efficientnet_lite0 mobilenet_v3_small] [--size 96]

Per backbone it prints the parameter count of the whole model; the inference time of one 512 x 512
image (batch 1, median of `--repeats` runs after warm-up); the training images/s of each task's
step (data loading, forward, loss, backward, AdamW step) at `--size` next to the bare backbone's
forward + backward images/s at the same size, so that the data path and head overhead show as a
ratio; and peak memory. It also times one epoch of the data path with the decoded-image cache
against decoding every JPEG again. Data: `--mini` (e.g. data/mini), else a seeded synthetic set
generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from seqmtl.backbones import BACKBONES
from seqmtl.data import TASKS, TaskDataset, build_dataset, class_names, collate
from seqmtl.model import UnifiedModel
from seqmtl.runtime import peak_memory_mb, resolve_device
from seqmtl.subsample import subsample
from seqmtl.synthetic import COCO_FIRST_TEN, generate
from seqmtl.tasks import build_tasks


def median_seconds(
    fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 3
) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs, with `device`
    synchronised around each run when it is a GPU."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def inference_ms(model: torch.nn.Module, device: torch.device, size: int, repeats: int) -> float:
    """Median ms of one forward pass of a (1, 3, size, size) image in eval mode."""
    model.eval()
    x = torch.rand(1, 3, size, size, device=device)
    return 1000 * median_seconds(lambda: model(x), repeats, device)


def backbone_images_per_second(
    model: UnifiedModel, device: torch.device, size: int, batch: int, steps: int
) -> float:
    """Images/s of the bare backbone's forward + backward on random batches."""
    backbone = model.trunk.backbone.train()
    x = torch.rand(batch, 3, size, size, device=device)

    def step() -> None:
        backbone.zero_grad(set_to_none=True)
        torch.stack([f.mean() for f in backbone(x)]).sum().backward()

    return batch / median_seconds(step, steps, device)


def task_images_per_second(
    model: UnifiedModel, mini: Path, task: str, device: torch.device, size: int, batch: int,
    steps: int,
) -> float:  # fmt: skip
    """Images/s of full training steps of `task`, data loading included."""
    tasks = build_tasks(model.num_classes, 0.5)
    loader = DataLoader(
        build_dataset(mini, task, "train", size, train=True),
        batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    batches = iter(())

    def step() -> None:
        nonlocal batches
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        optimizer.zero_grad(set_to_none=True)
        losses = tasks[task].loss(model(images.to(device)), targets, size)
        torch.stack(list(losses.values())).sum().backward()
        optimizer.step()

    return batch / median_seconds(step, steps, device)


def data_epoch_seconds(mini: Path, size: int) -> tuple[float, float]:
    """Seconds for one epoch of augmented classification samples: (from the decoded-image cache,
    decoding and resizing every JPEG again first, as an uncached reader does every epoch)."""

    def epoch(dataset: TaskDataset) -> None:
        for i in range(len(dataset)):
            dataset[i]

    dataset = build_dataset(mini, "cls", "train", size, train=True)
    cached = median_seconds(lambda: epoch(dataset), 3, torch.device("cpu"), warmup=1)
    uncached = median_seconds(
        lambda: epoch(build_dataset(mini, "cls", "train", size, train=True)),
        3,
        torch.device("cpu"),
        warmup=1,
    )
    return cached, uncached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=sorted(BACKBONES))
    parser.add_argument("--size", type=int, default=96, help="training image side")
    parser.add_argument("--batch", type=int, default=8, help="training batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per task")
    parser.add_argument("--repeats", type=int, default=20, help="timed inference runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mini", type=Path, help="mini datasets to use (default: generated)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"device {device} | threads {torch.get_num_threads()} | {platform.processor() or '?'}"
          f" | torch {torch.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        mini = args.mini
        if mini is None:
            mini = Path(tmp) / "mini"
            generate(Path(tmp) / "raw", seed=0, n_train=64, n_val=8, size=160)
            subsample(Path(tmp) / "raw", mini, 0, 64, 8, list(COCO_FIRST_TEN))
        counts = {t: len(names) for t, names in class_names(mini).items()}
        cached, uncached = data_epoch_seconds(mini, args.size)
        print(f"data path, one epoch of cls train images at {args.size} px: {cached:.3f} s from "
              f"the decoded cache, {uncached:.3f} s decoding the JPEGs again")  # fmt: skip
        for name in args.backbones:
            pretrained = name == "efficientnet_lite0"  # the only weights available offline
            model = UnifiedModel(counts, name, pretrained).to(device)
            params = sum(p.numel() for p in model.parameters())
            latency = inference_ms(model, device, 512, args.repeats)
            bare = backbone_images_per_second(model, device, args.size, args.batch, args.steps)
            print(f"\n{name}: {params / 1e6:.2f} M parameters, {latency:.1f} ms per 512x512 "
                  f"image (batch 1, median of {args.repeats})")  # fmt: skip
            print(f"  bare backbone forward+backward: {bare:.1f} images/s at {args.size} px")
            for task in TASKS:
                ips = task_images_per_second(
                    model, mini, task, device, args.size, args.batch, args.steps
                )
                print(f"  {task} training step: {ips:.1f} images/s ({ips / bare:.2f} x backbone)")
            print(f"  peak memory so far: {peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
