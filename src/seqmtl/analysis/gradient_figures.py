"""The figures of the gradient analysis (`seqmtl.analysis.gradients`): batch-gradient cosines,
noise scale and task cosines over the epochs, task-cosine matrices per layer group, and the
t-SNE of batch-gradient directions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from torch import Tensor

from seqmtl.analysis.gradients import GROUPS, cosine_matrix
from seqmtl.data.datasets import TASKS
from seqmtl.files import save_png


def plot_batch_cosines(directions: dict[str, Tensor], epoch: int, path: Path) -> None:
    """Heatmap of the cosines between all batch gradients of a snapshot, tasks in blocks."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    matrix = cosine_matrix(torch.cat(list(directions.values())))
    image = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    counts = np.array([len(d) for d in directions.values()])
    edges = np.cumsum(counts)
    for edge in edges[:-1]:
        ax.axhline(edge - 0.5, color="k", lw=0.8)
        ax.axvline(edge - 0.5, color="k", lw=0.8)
    centres = edges - counts / 2 - 0.5
    ax.set_xticks(centres, list(directions))
    ax.set_yticks(centres, list(directions))
    ax.set_title(f"Batch-gradient cosines, epoch {epoch} (count sketch)")
    fig.colorbar(image, ax=ax)
    save_png(fig, path, dpi=100)


def _stage_ends(snapshots: dict[str, dict[str, Any]], ax: Axes) -> None:
    """Dotted vertical lines at the last snapshot of every stage but the last."""
    ends = {}
    for s in snapshots.values():
        ends[s["stage"]] = max(ends.get(s["stage"], 0), s["epoch"])
    for stage in sorted(ends)[:-1]:
        ax.axvline(ends[stage], color="grey", ls=":", lw=1)


def plot_over_epochs(snapshots: dict[str, dict[str, Any]], folder: Path) -> None:
    """noise_scale.png (B_simple and the B_small noise ratio per task) and task_cosine.png
    (one panel per task pair: the cosine over all shared parameters and per layer group)."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for task in TASKS:
        rows = [(s["epoch"], s["tasks"][task]) for s in snapshots.values() if task in s["tasks"]]
        for ax, key in zip(axes, ("noise_scale", "noise_ratio_small"), strict=True):
            xy = [(e, r[key]) for e, r in rows if r[key] is not None and r[key] > 0]
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", label=task)
    for ax, title in zip(
        axes, ("B_simple = tr(Σ) / |G|² (images)", "E|g_B - g_D|² / |g_D|² at B_small"), strict=True
    ):
        ax.set(yscale="log", xlabel="epoch", title=title)
        _stage_ends(snapshots, ax)
        ax.legend()
    save_png(fig, folder / "noise_scale.png", dpi=100)

    pairs = [f"{a}-{b}" for i, a in enumerate(TASKS) for b in TASKS[i + 1 :]]
    fig = Figure(figsize=(5 * len(pairs), 4))
    axes = fig.subplots(1, len(pairs), sharey=True)
    for ax, pair in zip(axes, pairs, strict=True):
        rows = [
            (s["epoch"], s["task_cosine"][pair])
            for s in snapshots.values()
            if pair in s["task_cosine"]
        ]
        for group in ("all", *GROUPS):
            xy = [(e, c[group]) for e, c in rows if c[group] is not None]
            if xy:
                ax.plot(
                    *zip(*xy, strict=True), marker="o", lw=2.5 if group == "all" else 1, label=group
                )
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="epoch", title=f"cos(g_D) {pair}", ylim=(-1, 1))
        _stage_ends(snapshots, ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save_png(fig, folder / "task_cosine.png", dpi=100)


def plot_task_cosine_matrices(snapshots: dict[str, dict[str, Any]], path: Path) -> None:
    """One annotated task x task matrix of full-gradient cosines (all shared parameters) per
    snapshot that has seen two tasks or more; grey where not applicable."""
    shown = [s for s in snapshots.values() if s["task_cosine"]]
    if not shown:
        return
    fig = Figure(figsize=(3 * len(shown), 3.2))
    axes = fig.subplots(1, len(shown), squeeze=False)
    for ax, snapshot in zip(axes[0], shown, strict=True):
        names = [t for t in TASKS if t in snapshot["tasks"]]
        matrix = np.eye(len(names))
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                value = snapshot["task_cosine"][f"{a}-{names[j]}"]["all"]
                matrix[i, j] = matrix[j, i] = np.nan if value is None else value
        ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1)
        for (i, j), value in np.ndenumerate(matrix):
            dark = abs(value) > 0.6  # white text on the saturated cells
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="w" if dark else "k")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"epoch {snapshot['epoch']}")
    fig.suptitle("Task-gradient cosines on the shared parameters")
    save_png(fig, path, dpi=100)


def plot_tsne(
    points: list[tuple[int, str, Tensor]], perplexity: int, seed: int, path: Path
) -> None:
    """t-SNE (scikit-learn, PCA initialisation, perplexity min(perplexity, (n - 1) / 3)) of all
    sketched batch-gradient directions; left coloured by task, right by epoch."""
    directions = torch.cat([d for _, _, d in points]).numpy()
    epochs = np.concatenate([[e] * len(d) for e, _, d in points])
    tasks = np.concatenate([[t] * len(d) for _, t, d in points])
    perplexity = min(perplexity, (len(directions) - 1) / 3)
    xy = TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(directions)
    fig = Figure(figsize=(11, 5))
    left, right = fig.subplots(1, 2)
    for task in TASKS:
        chosen = tasks == task
        if chosen.any():
            left.scatter(*xy[chosen].T, s=10, label=task)
    left.legend()
    left.set_title("Batch-gradient directions (t-SNE) by task")
    scatter = right.scatter(*xy.T, c=epochs, s=10, cmap="viridis")
    fig.colorbar(scatter, ax=right, label="epoch")
    right.set_title("… by epoch")
    save_png(fig, path, dpi=100)
