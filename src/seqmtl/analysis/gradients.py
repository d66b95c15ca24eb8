"""Gradient estimators on the training snapshots: noise scale, batch-gradient similarity, t-SNE of
gradient directions, and interference between the tasks' gradients on the shared parameters (their
figures: `seqmtl.analysis.gradient_figures`).

Conventions:

- Shared parameters: every backbone, neck (FPN) and head-hidden-layer parameter, i.e. all but
  the head's last 1x1 conv (whose output channels are split between the tasks). Layer groups:
  early backbone (what the stride-8 feature map depends on), late backbone (the rest of the
  backbone), neck, head.
- BatchNorm in eval mode (running statistics) and no augmentation: a batch's loss is then a fixed
  function of its images, the one the model computes at evaluation, and the gradients of a
  partition of the analysed set average exactly to its full gradient. (Train-mode BN would make
  each image's gradient depend on its batch mates, and move the running statistics.)
- Analysed set of a task: its training split (a seeded subset of `images` of it, when given),
  truncated to a multiple of B_big and split into batches of B_small images in a seeded random
  order, the same at every snapshot. A batch gradient is that of the task's loss (as the training
  loop computes it) on one such batch; a B_big gradient is the mean of B_big / B_small consecutive
  ones (gradient accumulation); the full gradient g_D is the mean of all of them.
- Batch-gradient cosines and the t-SNE use a count sketch of the gradients (`CountSketch`); task
  cosines and norms are exact. Gradients are flattened to float32; sums of squares in float64.
- A pair of tasks is compared on the parameters both losses reach; where they reach none in
  common (one trunk per task), the cosine is not applicable and reported as null.
- Runs on the CPU, where the model is loaded: the same inputs give byte-identical outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmtl.config import Config, Gradients
from seqmtl.data.datasets import TASKS, TaskDataset, build_dataset, collate, task_image_sizes
from seqmtl.files import atomic_dir, write_json
from seqmtl.models.model import shared_modules, shared_parameters
from seqmtl.strategies import total
from seqmtl.tasks.registry import Task, build_tasks
from seqmtl.training.checkpoints import load_checkpoint
from seqmtl.training.logs import read_weights

GROUPS = ("early_backbone", "late_backbone", "neck", "head")


@dataclass(frozen=True)
class SharedParameters:
    """The analysed parameters in model order, with their names and layer groups."""

    names: list[str]
    params: list[nn.Parameter]
    groups: list[str]

    @property
    def sizes(self) -> list[int]:
        return [p.numel() for p in self.params]

    def count(self, group: str | None = None) -> int:
        """Number of scalars in `group` (all groups when None)."""
        return sum(n for n, g in zip(self.sizes, self.groups, strict=True) if group in (None, g))


def shared_parameter_groups(model: nn.Module) -> SharedParameters:
    """`seqmtl.models.model.shared_parameters`, grouped; a backbone's early group is found from the
    autograd graph of its stride-8 output on a dummy input (the model must be in eval mode, so
    that no BN statistics move, and its parameters must require gradients)."""
    group_of: dict[int, str] = {}
    for kind, module in shared_modules(model):
        params = list(module.parameters())
        if kind == "backbone":
            c3 = module(torch.zeros(1, 3, 64, 64, device=params[0].device))[0]
            early = torch.autograd.grad(c3.sum(), params, allow_unused=True)
            for p, g in zip(params, early, strict=True):
                group_of[id(p)] = "late_backbone" if g is None else "early_backbone"
        else:
            group_of |= {id(p): kind for p in params}
    named = list(shared_parameters(model).items())
    if not named:
        raise ValueError(f"{type(model).__name__} has no backbone, neck or head parameters")
    return SharedParameters(
        [n for n, _ in named], [p for _, p in named], [group_of[id(p)] for _, p in named]
    )


def flat_gradient(loss: Tensor, params: list[nn.Parameter]) -> tuple[Tensor, Tensor]:
    """∇loss w.r.t. `params` concatenated into one float32 vector (zeros for parameters the loss
    does not reach), and the boolean mask of the parameters it reaches."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    reached = torch.tensor([g is not None for g in grads])
    flat = [
        (torch.zeros_like(p) if g is None else g).reshape(-1).float()
        for p, g in zip(params, grads, strict=True)
    ]
    return torch.cat(flat), reached


class TaskGradients:
    """Iterable over the batch gradients of `task` on `shared`, one per batch of `batch_size`
    images of `dataset` taken in `order`; after iterating, `reached` marks the parameters the
    task's loss depends on."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        dataset: TaskDataset,
        order: Tensor,
        batch_size: int,
        shared: SharedParameters,
    ) -> None:
        self.model, self.task, self.dataset = model, task, dataset
        self.order, self.batch_size, self.shared = order, batch_size, shared
        self.reached = torch.zeros(len(shared.params), dtype=torch.bool)

    def __iter__(self) -> Iterator[Tensor]:
        device = self.shared.params[0].device
        for start in range(0, len(self.order), self.batch_size):
            indices = self.order[start : start + self.batch_size].tolist()
            images, targets = collate([self.dataset[i] for i in indices])
            outputs = self.model(images.to(device), tasks=(self.task.name,))
            loss = total(self.task.loss(outputs, targets, images.shape[-1]))
            gradient, reached = flat_gradient(loss, self.shared.params)
            self.reached |= reached
            yield gradient


class CountSketch:
    """A sparse Johnson-Lindenstrauss projection R^n -> R^dim (count sketch, or feature hashing:
    Charikar et al. 2002, Weinberger et al. 2009): coordinate i is added with sign s(i) = ±1 to
    bucket h(i), both drawn once from a torch.Generator seeded with `seed`.

    <Sx, Sy> is an unbiased estimate of <x, y> with variance at most
    (|x|²|y|² + <x, y>²) / dim, so for unit vectors the cosine error has a standard deviation of
    at most sqrt(2 / dim) (0.011 at dim = 16384). Chosen over scikit-learn's random projections,
    which build an explicit n x dim matrix: at millions of parameters the sketch needs only one
    bucket and one sign per parameter, and one pass over the vector.
    """

    def __init__(self, n: int, dim: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.bucket = torch.randint(dim, (n,), generator=generator)
        self.sign = torch.randint(2, (n,), generator=generator).float() * 2 - 1

    def __call__(self, x: Tensor) -> Tensor:
        return torch.bincount(self.bucket, weights=x * self.sign, minlength=self.dim)


def cosine_matrix(vectors: Tensor) -> Tensor:
    """(n, n) cosines between the rows of `vectors`."""
    unit = F.normalize(vectors, dim=1)
    return (unit @ unit.T).clamp(-1, 1)


@dataclass(frozen=True)
class NoiseScale:
    """Estimates of |G|², its standard error, tr(Σ), and B_simple = tr(Σ) / |G|² (in images).

    `simple` is None, and `undefined` says why, where the estimate means nothing: |G|² is not
    above twice its standard error (the noise swamps the gradient at this sample size, and a
    ratio to a near-zero |G|² is arbitrary), or B_simple exceeds the `images` of the training set
    (a batch larger than the whole set cannot be the critical batch it estimates)."""

    grad_sq: float
    grad_sq_se: float | None
    trace: float
    simple: float | None
    undefined: str | None


def noise_scale(
    sq_small: list[float], sq_big: list[float], b_small: int, b_big: int, images: int
) -> NoiseScale:
    """The simple noise scale from mean squared batch-gradient norms at two batch sizes, one
    pair per B_big group (`sq_small[j]`: the mean |g_small|² of group j's B_small batches,
    `sq_big[j]`: |g_big|² of their mean).

    McCandlish et al. 2018 (An Empirical Model of Large-Batch Training), appendix A.1: from
    E|g_B|² = |G|² + tr(Σ) / B,
        |G|² ≈ (B_big |g_big|² - B_small |g_small|²) / (B_big - B_small),
        tr(Σ) ≈ (|g_small|² - |g_big|²) / (1 / B_small - 1 / B_big),
    both unbiased, here from the means over the groups. When the batches partition a sample of
    N images the finite-population terms (-tr(Σ) / N in both E|g_B|²) cancel in tr(Σ) and leave
    |G|² unbiased for the population. The standard error of |G|² is the spread of the
    per-group estimates over sqrt(groups) (None with one group: then B_simple is undefined).
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < B_small < B_big, got {b_small} and {b_big}")
    if not sq_small or len(sq_small) != len(sq_big):
        raise ValueError("need one |g_small|² and one |g_big|² per B_big group")
    small, big = np.asarray(sq_small), np.asarray(sq_big)
    per_group = (b_big * big - b_small * small) / (b_big - b_small)
    grad_sq = float(per_group.mean())
    trace = float((small.mean() - big.mean()) / (1 / b_small - 1 / b_big))
    se = float(per_group.std(ddof=1) / math.sqrt(len(per_group))) if len(per_group) > 1 else None
    if se is None:
        return NoiseScale(grad_sq, se, trace, None, "one B_big group: no error estimate of |G|²")
    if grad_sq <= 2 * se:
        reason = f"|G|² = {grad_sq:.3g} is not above twice its standard error {se:.3g}"
        return NoiseScale(grad_sq, se, trace, None, reason)
    if trace / grad_sq > images:
        reason = f"B_simple = {trace / grad_sq:.3g} exceeds the {images} training images"
        return NoiseScale(grad_sq, se, trace, None, reason)
    return NoiseScale(grad_sq, se, trace, trace / grad_sq, None)


@dataclass(frozen=True)
class BatchStatistics:
    """One task's batch gradients at one snapshot, summarised.

    full: g_D, the mean batch gradient; sq_small / sq_big: per B_big group, the mean |g_B|² of
    its B_small batches / |g_B|² of their mean; directions: the sketched batch gradients, unit
    length, (n, dim); sketch_errors: |sketched - exact| cosine of each pair of consecutive batch
    gradients.
    """

    full: Tensor
    sq_small: list[float]
    sq_big: list[float]
    directions: Tensor
    sketch_errors: list[float]

    def noise_ratio(self, sq_batch: list[float]) -> float:
        """E|g_B - g_D|² / |g_D|² = (mean |g_B|² - |g_D|²) / |g_D|² (exact: g_D is the mean of
        the g_B, so their mean inner product with it is |g_D|²)."""
        full_sq = squared_norm(self.full)
        return (float(np.mean(sq_batch)) - full_sq) / full_sq


def squared_norm(x: Tensor) -> float:
    """|x|², accumulated in float64."""
    return torch.linalg.vector_norm(x, dtype=torch.float64).item() ** 2


def batch_statistics(
    batches: Iterable[Tensor], per_big: int, sketch: CountSketch
) -> BatchStatistics:
    """Summarise B_small batch gradients, grouping `per_big` consecutive ones into a B_big one
    (their count must be a multiple of `per_big`); holds three gradients in memory at a time."""
    full = big = previous = None
    group_small = 0.0
    sq_small, sq_big, directions, errors = [], [], [], []
    for n, gradient in enumerate(batches, 1):
        group_small += squared_norm(gradient)
        big = gradient.clone() if big is None else big.add_(gradient)
        full = gradient.clone() if full is None else full.add_(gradient)
        if n % per_big == 0:
            sq_small.append(group_small / per_big)
            sq_big.append(squared_norm(big / per_big))
            big, group_small = None, 0.0
        directions.append(F.normalize(sketch(gradient), dim=0))
        if previous is not None:
            exact = F.cosine_similarity(gradient, previous, dim=0).item()
            errors.append(abs(directions[-1] @ directions[-2] - exact).item())
        previous = gradient
    if full is None or big is not None:
        raise ValueError(f"need a positive multiple of {per_big} batch gradients")
    return BatchStatistics(full / n, sq_small, sq_big, torch.stack(directions), errors)


def task_cosines(
    full: dict[str, Tensor], reached: dict[str, Tensor], shared: SharedParameters
) -> dict[str, dict[str, float | None]]:
    """Cosine between each pair of tasks' full gradients ("seg-det", …), over all shared
    parameters ("all") and over each layer group, restricted to the parameters both losses
    reach; None where they reach none in common or a gradient vanishes there."""
    names = [t for t in TASKS if t in full]
    sizes = shared.sizes
    groups = np.array(shared.groups)
    out: dict[str, dict[str, float | None]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            dots = _per_parameter_dots(full[a], full[b], sizes)
            both = (reached[a] & reached[b]).numpy()
            out[f"{a}-{b}"] = {"all": _cosine(dots[both])} | {
                group: _cosine(dots[both & (groups == group)]) for group in GROUPS
            }
    return out


def _per_parameter_dots(a: Tensor, b: Tensor, sizes: list[int]) -> np.ndarray:
    """(n_params, 3) rows (<a, b>, |a|², |b|²) per parameter of the flat vectors, in float64."""
    parts = zip(a.double().split(sizes), b.double().split(sizes), strict=True)
    return torch.stack([torch.stack([x @ y, x @ x, y @ y]) for x, y in parts]).numpy()


def _cosine(dots: np.ndarray) -> float | None:
    """Σ<a, b> / sqrt(Σ|a|² Σ|b|²) from per-parameter rows (<a, b>, |a|², |b|²)."""
    ab, aa, bb = dots.sum(0) if len(dots) else (0.0, 0.0, 0.0)
    return float(ab / math.sqrt(aa * bb)) if aa > 0 and bb > 0 else None


def analysed_order(n: int, cfg: Gradients, seed: int) -> Tensor:
    """Seeded random order of the analysed images of an n-image split: `cfg.images` of them
    (all when null), truncated to a multiple of B_big."""
    wanted = n if cfg.images is None else min(cfg.images, n)
    count = wanted - wanted % cfg.batch_big
    if count == 0:
        raise ValueError(
            f"gradients.batch_big ({cfg.batch_big}) exceeds the {wanted} analysable images"
        )
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]


def _round(x: float | None) -> float | None:
    """Six significant digits (stable JSON across runs)."""
    return None if x is None else float(f"{x:.6g}")


@dataclass(frozen=True)
class GradientPaths:
    """Where the gradients stage reads and writes: `snapshots` are the stages' snapshot folders
    in stage order (each folder's epoch_*.pt in name order); `histories` the strategy logs
    (strategy.csv) of the stages that may write one, read where present."""

    mini: Path
    snapshots: list[Path]
    histories: list[Path]
    metrics: Path
    plots: Path


def analyse_gradients(params: Config, paths: GradientPaths) -> dict[str, Any]:
    """Analyse every snapshot under `paths.snapshots` (in stage order) on every task it has seen;
    write the numbers to `paths.metrics` and the figures under `paths.plots`."""
    from seqmtl.analysis import gradient_figures as figures  # it imports these estimators

    cfg = params.gradients
    seed = params.seed
    b_small, b_big = cfg.batch_small, cfg.batch_big
    datasets: dict[str, TaskDataset] = {}
    orders: dict[str, Tensor] = {}
    snapshots: dict[str, dict[str, Any]] = {}
    directions: dict[str, dict[str, Tensor]] = {}
    errors: list[float] = []
    for path in [p for folder in paths.snapshots for p in sorted(folder.glob("epoch_*.pt"))]:
        model, checkpoint = load_checkpoint(path)
        model.eval().requires_grad_(True)  # a strategy may have frozen some parameters
        shared = shared_parameter_groups(model)
        tasks = build_tasks(
            model.num_classes, params.train.score_threshold, params.train.seg_loss_stride
        )
        sketch = CountSketch(shared.count(), cfg.projection_dim, seed)
        stats: dict[str, BatchStatistics] = {}
        reached: dict[str, Tensor] = {}
        for task in checkpoint["tasks"]:
            if task not in datasets:
                size = task_image_sizes(params, [task])[task]
                datasets[task] = build_dataset(paths.mini, task, "train", size, train=False)
                orders[task] = analysed_order(
                    len(datasets[task]), cfg, seed + TASKS.index(task) + 1
                )
            gradients = TaskGradients(
                model, tasks[task], datasets[task], orders[task], b_small, shared
            )
            stats[task] = batch_statistics(gradients, b_big // b_small, sketch)
            reached[task] = gradients.reached
        epoch = int(checkpoint["epoch"])
        snapshots[path.stem] = {
            "epoch": epoch,
            "stage": len(checkpoint["tasks"]),
            "strategy": checkpoint["strategy"],
            "tasks": {
                t: task_summary(s, b_small, b_big, len(datasets[t])) for t, s in stats.items()
            },
            "task_cosine": {
                pair: {group: _round(c) for group, c in cosines.items()}
                for pair, cosines in task_cosines(
                    {t: s.full for t, s in stats.items()}, reached, shared
                ).items()
            },
        }
        directions[path.stem] = {t: s.directions for t, s in stats.items()}
        errors += [e for s in stats.values() for e in s.sketch_errors]
    histories = {
        path.parent.name: frame.set_index("step").filter(regex="^w_")
        for path in paths.histories
        if (frame := read_weights(path)) is not None
    }
    result = {
        "settings": {
            "batchnorm": "eval",
            "batch_small": b_small,
            "batch_big": b_big,
            "images": {t: len(o) for t, o in orders.items()},
            "shared_parameters": {g: shared.count(g) for g in GROUPS} | {"all": shared.count()},
            "projection": {
                "kind": "count_sketch",
                "dim": cfg.projection_dim,
                "max_abs_cosine_error": _round(max(errors, default=0.0)),
                "pairs_checked": len(errors),
            },
        },
        "snapshots": snapshots,
        "weight_history": {
            stage: {"steps": len(h), "initial": _rounded(h.iloc[0]), "final": _rounded(h.iloc[-1])}
            for stage, h in histories.items()
        },
    }
    write_json(paths.metrics, result)
    with atomic_dir(paths.plots) as folder:
        for name, snapshot in snapshots.items():
            figures.plot_batch_cosines(
                directions[name], snapshot["epoch"], folder / f"batch_cosine_{name}.png"
            )
        figures.plot_over_epochs(snapshots, folder)
        figures.plot_task_cosine_matrices(snapshots, folder / "task_cosine_matrices.png")
        points = [
            (snapshots[n]["epoch"], t, d) for n, by in directions.items() for t, d in by.items()
        ]
        figures.plot_tsne(points, cfg.tsne_perplexity, seed, folder / "tsne.png")
    return result


def task_summary(
    stats: BatchStatistics, b_small: int, b_big: int, images: int
) -> dict[str, float | str | None]:
    """The JSON entry of one task at one snapshot (`images`: the size of its training set)."""
    scale = noise_scale(stats.sq_small, stats.sq_big, b_small, b_big, images)
    cosines = cosine_matrix(stats.directions)
    n = len(cosines)
    return {
        "full_grad_norm": _round(math.sqrt(squared_norm(stats.full))),
        "grad_sq": _round(scale.grad_sq),
        "grad_sq_se": _round(scale.grad_sq_se),
        "trace_cov": _round(scale.trace),
        "noise_scale": _round(scale.simple),
        "noise_scale_undefined": scale.undefined,
        "noise_ratio_small": _round(stats.noise_ratio(stats.sq_small)),
        "noise_ratio_big": _round(stats.noise_ratio(stats.sq_big)),
        "batch_cosine": _round(((cosines.sum() - cosines.trace()) / (n * (n - 1))).item()),
    }


def _rounded(row: pd.Series) -> dict[str, float | None]:
    return {name.removeprefix("w_"): _round(float(v)) for name, v in row.items()}


# --- figures ---
