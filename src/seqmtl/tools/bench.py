"""Benchmark: inference and training speed per backbone, timed so that machine noise cancels.

    seqmtl bench [--backbones ...] [--rounds 30] [--out results/benchmarks/benchmark.json]

What is compared is timed interleaved in one process: every round runs each variant once, in an
order rotated by one each round, so a slow spell of a shared machine hits every variant alike.
Each time is reported as the median and the 10th and 90th percentiles over the rounds, and each
comparison as the median of the per-round ratios. Per backbone:
- inference of one 512 x 512 image (batch 1, eval mode, every task's outputs, no detection
  decoding): the bare backbone's features and the whole model, both as `for_inference` copies,
  and the whole model as trained ("eager");
- training, per task at its `--sizes` side (the real-data profile's by default): one full step
  (data, forward, loss, backward, clipping, AdamW and the seg loss's stride as params.yaml's
  `train` section sets them; `seqmtl.training.train.train_step`) against the bare backbone's
  forward + backward on a batch of the same shape;
and once: one epoch of the data path (cls train samples) from the decoded-image cache against
decoding every JPEG again. The CPU model, thread count and torch version go with the figures.
Data: `--mini` (e.g. data/mini), else a seeded synthetic set generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from seqmtl.analysis.timing import first_backbone, inference_timings, interleaved, ratio, summary
from seqmtl.config import load_config
from seqmtl.data.datasets import TASKS, TaskDataset, build_dataset, class_names, collate
from seqmtl.data.subsample import subsample
from seqmtl.data.synthetic import COCO_FIRST_TEN, generate
from seqmtl.files import write_json
from seqmtl.models.backbones import BACKBONES
from seqmtl.models.model import UnifiedModel
from seqmtl.runtime import machine, resolve_device
from seqmtl.strategies import NAIVE, StageContext, build_strategy
from seqmtl.tasks.registry import build_tasks
from seqmtl.training.stage import keep_freed_memory
from seqmtl.training.train import build_optimizer, train_step

REAL_SIZES = {"seg": 256, "det": 320, "cls": 224}  # conf/profile/real.yaml's


def training_timings(
    model: UnifiedModel, mini: Path, task: str, device: torch.device, size: int, batch: int,
    rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """Interleaved times of a full training step of `task` (naive, data loading included) and of
    the bare backbone's forward + backward on a batch of the same shape, with images/s."""
    data = build_dataset(mini, task, "train", size, train=True)
    loader = DataLoader(data, batch, shuffle=True, drop_last=True, collate_fn=collate)
    train_cfg = load_config().train  # the pipeline's optimizer, clipping and seg loss stride
    tasks = build_tasks(model.num_classes, 0.5, train_cfg.seg_loss_stride)
    ctx = StageContext(model, tasks, task, [], device, 0, batch, lambda _: data)
    strategy = build_strategy(NAIVE)
    optimizer = build_optimizer(model, strategy, 1e-4, train_cfg)
    batches = iter(())
    backbone = first_backbone(model)
    x = torch.rand(batch, 3, size, size, device=device)

    def step() -> None:
        nonlocal batches
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        train_step(ctx, strategy, images, targets, optimizer, False, train_cfg.clip_grad_norm)

    def bare() -> None:
        backbone.zero_grad(set_to_none=True)
        torch.stack([f.mean() for f in backbone(x)]).sum().backward()

    model.train()
    times = interleaved({"step": step, "backbone": bare}, rounds, device)
    return {
        "image_size": size,
        "batch_size": batch,
        "rounds": rounds,
        "step": summary(times["step"]),
        "backbone": summary(times["backbone"]),
        "step_images_per_second": round(batch / statistics.median(times["step"]), 2),
        "backbone_images_per_second": round(batch / statistics.median(times["backbone"]), 2),
        "step_vs_backbone_speed": ratio(times, "backbone", "step"),
    }


def data_path_timings(mini: Path, size: int, rounds: int) -> dict[str, Any]:
    """Interleaved times of one epoch of augmented cls train samples: from the decoded-image
    cache, and building the dataset again (decoding and resizing every JPEG) first."""

    def epoch(dataset: TaskDataset) -> None:
        for i in range(len(dataset)):
            dataset[i]

    cached = build_dataset(mini, "cls", "train", size, train=True)
    times = interleaved(
        {
            "cached": lambda: epoch(cached),
            "decoding": lambda: epoch(build_dataset(mini, "cls", "train", size, train=True)),
        },
        rounds,
        torch.device("cpu"),
        warmup=1,
    )
    return {"image_size": size, "images": len(cached)} | {k: summary(t) for k, t in times.items()}


def parse_sizes(items: list[str]) -> dict[str, int]:
    """{"seg": 256, ...} from ["seg=256", ...]; every task must be given, as a positive int."""
    sizes = dict(item.split("=", 1) for item in items if "=" in item)
    valid = all(v.isdigit() and int(v) > 0 for v in sizes.values())
    if sorted(sizes) != sorted(TASKS) or not valid:
        raise SystemExit(f"--sizes: expected {' '.join(f'{t}=SIDE' for t in TASKS)}, got {items}")
    return {t: int(v) for t, v in sizes.items()}


def benchmark(
    mini: Path, backbones: list[str], sizes: dict[str, int], batch: int, rounds: int,
    train_rounds: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Every figure of the module docstring, printed as measured and returned as a dict."""
    result: dict[str, Any] = {"machine": machine(device), "backbones": {}}
    result["data_path"] = data_path_timings(mini, sizes["cls"], 5)
    print(f"machine: {result['machine']}\ndata path: {result['data_path']}")
    counts = {t: len(names) for t, names in class_names(mini).items()}
    for name in backbones:
        pretrained = name == "efficientnet_lite0"  # the only weights available offline
        model = UnifiedModel(counts, name, pretrained).to(device)
        entry: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
        entry["inference"] = inference_timings(model, device, 512, rounds)
        print(f"\n{name}: {entry['parameters'] / 1e6:.2f} M parameters")
        inf = entry["inference"]
        for variant in ("backbone", "model", "eager"):
            t = inf[variant]
            print(f"  inference 512x512, {variant:8s}: median {t['median_ms']:6.1f} ms "
                  f"(p10 {t['p10_ms']:.1f}, p90 {t['p90_ms']:.1f})")  # fmt: skip
        print(f"  model / backbone {inf['model_vs_backbone']:.3f}, "
              f"model / eager {inf['model_vs_eager']:.3f}")  # fmt: skip
        entry["training"] = {}
        for task in TASKS:
            t = training_timings(model, mini, task, device, sizes[task], batch, train_rounds)
            entry["training"][task] = t
            print(f"  {task} training step at {sizes[task]} px: {t['step_images_per_second']:.1f}"
                  f" images/s, backbone fwd+bwd {t['backbone_images_per_second']:.1f}: "
                  f"{t['step_vs_backbone_speed']:.2f} x")  # fmt: skip
        result["backbones"][name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=sorted(BACKBONES))
    real = [f"{t}={s}" for t, s in REAL_SIZES.items()]
    parser.add_argument("--sizes", nargs="+", default=real, help="training side per task")
    parser.add_argument("--batch", type=int, default=8, help="training batch size")
    parser.add_argument("--rounds", type=int, default=30, help="inference rounds")
    parser.add_argument("--train-rounds", type=int, default=10, help="training rounds per task")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mini", type=Path, help="mini datasets to use (default: generated)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes)
    device = resolve_device(args.device)
    kept = keep_freed_memory()  # as every pipeline stage does
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        mini = args.mini
        if mini is None:
            mini = Path(tmp) / "mini"
            generate(Path(tmp) / "raw", seed=0, n_train=64, n_val=8, size=160)
            subsample(Path(tmp) / "raw", mini, 0, 64, 8, list(COCO_FIRST_TEN))
        result = benchmark(
            mini, args.backbones, sizes, args.batch, args.rounds, args.train_rounds, device
        )
    result["keeps_freed_memory"] = kept
    if args.out:
        write_json(args.out, result)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
