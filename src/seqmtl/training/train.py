"""One training routine behind the three stages: learn one task, evaluate every task seen so far."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from seqmtl import config
from seqmtl.data.datasets import TASKS, TaskDataset, build_dataset, collate, task_image_sizes
from seqmtl.files import atomic_dir, atomic_file, file_digest, write_json
from seqmtl.models.model import UnifiedModel, architecture, backbone_parameters
from seqmtl.runtime import peak_memory_mb, resolve_device, seed_everything
from seqmtl.strategies import NAIVE, Losses, StageContext, Strategy, build_strategy, total
from seqmtl.tasks.registry import Targets, build_tasks, evaluate_all
from seqmtl.training import resume
from seqmtl.training.checkpoints import model_factory
from seqmtl.training.distributed import average_, is_main, rank, setup, teardown, world_size
from seqmtl.training.logs import write_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePaths:
    """Where a stage reads and writes (`snapshots` None: no snapshots during training;
    `per_image`: the final evaluation's per-image statistics, `Task.per_image` by task;
    `resume`: where the stage keeps what resumes it after a stop, `seqmtl.training.resume`, None:
    never)."""

    mini: Path
    previous: Path | None
    checkpoint: Path
    snapshots: Path | None
    metrics: Path
    per_image: Path
    timing: Path
    plots: Path
    resume: Path | None = None


def warmup_cosine(
    optimizer: torch.optim.Optimizer, steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr x (s + 1) / w for the first w = warmup * steps steps, then a cosine decay to zero."""
    w = max(1, round(warmup * steps))

    def factor(s: int) -> float:
        if s < w:
            return (s + 1) / w
        return 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, steps - w)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(
    model: nn.Module, strategy: Strategy, lr: float, train_cfg: config.Train
) -> torch.optim.AdamW:
    """AdamW with three param groups: the backbone at lr x `train.backbone_lr` (a pretrained
    network is fine-tuned, not retrained), the rest of the model at lr, and the strategy's own
    parameters at `strategy.parameters_lr(lr)` without weight decay. The fused kernel updates
    every parameter in one pass instead of one per tensor, the same update, faster on the CPU."""
    multiplier = train_cfg.backbone_lr
    trainable = [p for p in model.parameters() if p.requires_grad]
    backbone = {id(p) for p in backbone_parameters(model)}
    return torch.optim.AdamW(
        [
            {"params": [p for p in trainable if id(p) in backbone], "lr": lr * multiplier},
            {"params": [p for p in trainable if id(p) not in backbone]},
            {
                "params": strategy.parameters(),
                "lr": strategy.parameters_lr(lr),
                "weight_decay": 0.0,
            },
        ],
        lr=lr,
        weight_decay=train_cfg.weight_decay,
        fused=True,
    )


class NonFiniteLoss(ValueError):
    """A loss term that is NaN or infinite: the step is not taken."""


def train_step(
    ctx: StageContext,
    strategy: Strategy,
    images: Tensor,
    targets: Targets,
    optimizer: torch.optim.Optimizer,
    mixed: bool,
    max_norm: float | None,
) -> tuple[Losses, float]:
    """One update of the model from a batch of the new task: the strategy's losses and backward,
    the gradients averaged over data-parallel processes (`seqmtl.training.distributed`), clipped to
    `max_norm` (where given), the optimiser's step, then the strategy's (its rule's own state).
    Returns the losses and the gradient norm before clipping; a loss that is not finite raises
    `NonFiniteLoss` before any update."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(ctx.device.type, torch.bfloat16, enabled=mixed):
        losses = strategy.losses(ctx, images, targets)
    for term, parts in losses.items():
        for part, value in parts.items():
            if not torch.isfinite(value.detach()).all():
                raise NonFiniteLoss(f"loss {term}/{part} is {value.item()}")
    strategy.backward(ctx, losses)
    average_(p.grad for group in optimizer.param_groups for p in group["params"])
    trainable = [p for p in ctx.model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm or math.inf)
    optimizer.step()
    strategy.after_step()
    return losses, norm.item()


def train_one_epoch(
    ctx: StageContext,
    strategy: Strategy,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    mixed: bool,
    max_norm: float | None,
) -> tuple[dict[str, float], float, int]:
    """One pass over `loader` of `train_step`s: the mean of every loss component and of the
    model's gradient norm (before clipping) over the steps and the processes, the seconds spent
    waiting for data, and the number of images this process saw."""
    ctx.model.train()
    sums: dict[str, float] = defaultdict(float)
    data_time, images_seen = 0.0, 0
    fetched = time.perf_counter()
    for images, targets in loader:
        data_time += time.perf_counter() - fetched
        losses, norm = train_step(ctx, strategy, images, targets, optimizer, mixed, max_norm)
        sums["grad_norm"] += norm / len(loader)
        scheduler.step()
        ctx.step += 1
        images_seen += len(images)
        for term, parts in losses.items():
            for part, value in parts.items():
                sums[f"{term}/{part}"] += value.item() / len(loader)
            sums[f"{term}/total"] += total(parts).item() / len(loader)
        fetched = time.perf_counter()
    means = torch.tensor([sums[k] for k in sorted(sums)], dtype=torch.float64)
    average_([means])
    return dict(zip(sorted(sums), means.tolist(), strict=True)), data_time, images_seen


def train_stage(
    stage: int,
    params: config.Config,
    paths: StagePaths,
    single_task: bool = False,
    tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Train stage `stage` of the sequence; write its checkpoint, metrics and plots.

    `tasks` are the tasks the stage's model serves, in order, the last one the task it learns
    (default: the first `stage` of `sequence`, or for `single_task` its stage-th alone); the
    previous stage's checkpoint must serve the others.

    Stage 1 has no earlier task to protect, so it always trains naively and reads no strategy
    parameter: its checkpoint is the shared starting point of every strategy.

    `single_task` trains the single-task reference of the stage: its task alone with the stage's
    budget, naively, evaluating only that task, epochs counted from 1; it reads neither `strategy`
    nor another stage's params. With `paths.previous` None it starts, like stage 1, from the
    fresh initialisation (`model_factory` with the same seed).

    Under torchrun (`train.processes` > 1, see `seqmtl.training.distributed`) each process trains
    on its share of every batch; rank 0 alone evaluates and writes, the others return {}.
    """
    device = setup(resolve_device(params.device))
    try:
        if tasks is None:
            order = params.sequence
            tasks = [order[stage - 1]] if single_task else list(order[:stage])
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown or len(set(tasks)) < len(tasks):
            raise ValueError(f"tasks {tasks}: each one of {', '.join(TASKS)}, at most once")
        seen = [TASKS[TASKS.index(t)] for t in tasks]  # the registry's own names
        return _train_stage(stage, params, paths, seen, single_task, device)
    finally:
        teardown()


def _train_stage(
    stage: int,
    params: config.Config,
    paths: StagePaths,
    seen: list[str],
    single_task: bool,
    device: torch.device,
) -> dict[str, Any]:
    """`train_stage` in this process, on `device`, one of `world_size()` data-parallel ones."""
    name, task = f"stage{stage}", seen[-1]
    cfg, train_cfg = params.tasks[task], params.train
    seed = params.seed
    mixed = train_cfg.precision == "bf16"
    world = world_size()
    batch_size = cfg.batch_size
    if batch_size % world:
        raise ValueError(
            f"tasks.{task}.batch_size ({batch_size}) must be divisible by the {world} processes "
            "(train.processes): each takes an equal share of every batch"
        )
    if stage == 1 or single_task:
        strategy = build_strategy(NAIVE)
    else:
        strategy = build_strategy(params.strategy, params.replay_buffer)
    strategy_name = strategy.name
    previous = None
    if paths.previous is not None:
        previous = torch.load(paths.previous, map_location="cpu", weights_only=True)
        if previous["tasks"] != seen[:-1]:
            raise ValueError(
                f"{paths.previous} serves {previous['tasks']}; {name} learns {task} after "
                f"{seen[:-1]}: rerun the earlier stages in this order"
            )
        if previous["strategy"] == strategy_name:
            strategy.load_state_dict(previous["strategy_state"])
    model = strategy.load_model(model_factory(params.model, paths.mini, seed), previous, seen)
    if previous is not None and isinstance(model, UnifiedModel):
        model.zero_task_output(task)
    if world > 1 and params.model.batchnorm == "train":
        if device.type != "cuda":
            raise ValueError(
                "model.batchnorm: train with train.processes > 1 needs SyncBatchNorm, which "
                "runs on CUDA only; use model.batchnorm: frozen or one process"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    seed_everything(seed + stage)

    tasks = build_tasks(model.num_classes, train_cfg.score_threshold, train_cfg.seg_loss_stride)
    sizes = task_image_sizes(params, seen)
    train_sets: dict[str, TaskDataset] = {}

    def train_data(t: str) -> TaskDataset:
        if t not in train_sets:
            train_sets[t] = build_dataset(paths.mini, t, "train", sizes[t], train=True)
            train_sets[t].seed = seed + stage
        return train_sets[t]

    val_loaders = {
        t: DataLoader(
            build_dataset(paths.mini, t, "val", sizes[t], train=False),
            batch_size=batch_size,
            collate_fn=collate,
        )
        for t in seen
    }
    sampler = DistributedSampler(
        train_data(task), world, rank(), shuffle=True, seed=seed + stage, drop_last=True
    )
    loader = DataLoader(
        train_data(task),
        batch_size=batch_size // world,
        sampler=sampler,
        drop_last=len(train_data(task)) > batch_size,
        collate_fn=collate,
    )
    ctx = StageContext(model, tasks, task, seen[:-1], device, seed + stage, batch_size, train_data)
    strategy.before_stage(ctx)
    arch = architecture(model, params.model)  # after the strategy froze what it freezes

    optimizer = build_optimizer(model, strategy, cfg.lr, train_cfg)
    max_norm = train_cfg.clip_grad_norm
    epochs = cfg.epochs
    scheduler = warmup_cosine(optimizer, epochs * len(loader), train_cfg.warmup)
    first_epoch = 0 if single_task else sum(params.tasks[t].epochs for t in seen[:-1])
    train_rows: list[dict[str, Any]] = []
    val_rows: list[dict[str, Any]] = []
    scores: dict[str, dict[str, float]] = {}
    train_time = data_time = 0.0
    images_seen = done = 0
    kept: list[Path] = []
    if paths.resume is not None:
        settings = json.dumps([params.as_dict(), single_task], sort_keys=True)
        fingerprint = resume.fingerprint(name, settings, paths.previous, paths.mini)
        if (saved := resume.load(paths.resume, fingerprint)) is not None:
            state, kept = saved
            done, ctx.step, ctx.history = state["epoch"], state["step"], state["history"]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            strategy.load_resume_state(state["strategy"])
            train_rows, val_rows, scores = state["rows"]
            train_time, data_time, images_seen = state["time"]
            resume.set_rng_state(state["rng"])
            log.info("%s: resuming after epoch %d of %d (%s)", name, done, epochs, paths.resume)
    keep = atomic_dir(paths.snapshots) if paths.snapshots and is_main() else nullcontext(None)
    with keep as snapshots:
        for old in kept if snapshots else []:
            shutil.copy2(old, snapshots / old.name)
        epoch_range = range(done + 1, epochs + 1)
        for epoch in (bar := tqdm(epoch_range, desc=f"{name} {task}", unit="epoch")):
            sampler.set_epoch(epoch)
            for dataset in train_sets.values():
                dataset.epoch = epoch
            start = time.perf_counter()
            try:
                sums, waited, seen_now = train_one_epoch(
                    ctx, strategy, loader, optimizer, scheduler, mixed, max_norm
                )
            except NonFiniteLoss as error:
                raise ValueError(f"{name} ({task}), epoch {epoch}: {error}") from None
            train_time += time.perf_counter() - start
            data_time += waited
            images_seen += seen_now * world
            global_epoch = first_epoch + epoch
            row = {"epoch": global_epoch, "stage": stage}
            train_rows.append(row | {k: round(v, 6) for k, v in sorted(sums.items())})
            bar.set_postfix({k: f"{v:.3f}" for k, v in sums.items() if k.endswith("/total")})
            last = epoch == epochs
            if is_main() and (epoch % train_cfg.eval_every == 0 or last):
                scores = evaluate_all(model, tasks, val_loaders, device)
                primary = {f"{t}_{tasks[t].primary}": round(scores[t][tasks[t].primary], 6)
                           for t in seen}  # fmt: skip
                val_rows.append(row | primary)
                log.info("epoch %d: %s", global_epoch, primary)
            if snapshots and (epoch % train_cfg.checkpoint_every == 0 or last):
                torch.save(
                    {"model": model.state_dict(), "epoch": global_epoch, "tasks": seen,
                     "strategy": strategy_name, "architecture": arch},
                    snapshots / f"epoch_{global_epoch:03d}.pt",
                )  # fmt: skip
            if paths.resume and is_main() and epoch % train_cfg.checkpoint_every == 0 and not last:
                state = {
                    "fingerprint": fingerprint, "epoch": epoch, "step": ctx.step,
                    "history": ctx.history, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "strategy": strategy.resume_state(), "rows": (train_rows, val_rows, scores),
                    "time": (train_time, data_time, images_seen), "rng": resume.rng_state(),
                }  # fmt: skip
                resume.save(
                    paths.resume, state, sorted(snapshots.glob("*.pt")) if snapshots else []
                )
    strategy.after_stage(ctx)
    if not is_main():
        return {}
    with atomic_file(paths.checkpoint, "wb") as handle:
        torch.save(
            {"model": model.state_dict(), "tasks": seen, "strategy": strategy_name,
             "strategy_state": strategy.state_dict(), "architecture": arch},
            handle,
        )  # fmt: skip
    metrics = {
        "task": task,
        "strategy": strategy_name,
        "final": {t: rounded(scores[t]) for t in seen},
        "chance": {t: round(tasks[t].chance(val_loaders[t].dataset), 6) for t in seen},
        "loss": {k: v for k, v in train_rows[-1].items() if "/" in k},
    }
    write_json(paths.metrics, metrics)
    write_json(paths.per_image, {t: tasks[t].per_image() for t in seen})
    write_json(
        paths.timing,
        {
            "train_seconds": round(train_time, 2),
            "data_seconds_per_epoch": round(data_time / epochs, 3),
            "images_per_second": round(images_seen / train_time, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "metrics_md5": file_digest(paths.metrics),  # which run this timed (evaluate checks)
        },
    )
    write_csv(paths.plots / "train.csv", train_rows)
    write_csv(paths.plots / "val.csv", val_rows)
    if ctx.history:
        write_csv(paths.plots / "strategy.csv", ctx.history)
    if paths.resume is not None:
        resume.clear(paths.resume)
    return metrics


def rounded(scores: dict[str, float | None]) -> dict[str, float | None]:
    """Metric values rounded to 6 digits (None, an undefined metric, kept)."""
    return {k: None if v is None else round(v, 6) for k, v in scores.items()}
