"""The evaluation's figures, drawn on matplotlib's Agg canvas (no pyplot state).

Every figure runs over global epochs (stage after stage) with the stages marked. PNGs are saved
without the "Software" text chunk (the only varying metadata matplotlib writes), so equal inputs
give byte-identical files on the same machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from seqmtl.analysis.evaluate import METRIC_NAME
from seqmtl.data.datasets import task_order
from seqmtl.files import atomic_dir, save_png
from seqmtl.training.logs import read_weights

TASK_COLOR = {"seg": "C0", "det": "C1", "cls": "C2"}
Spans = dict[int, tuple[int, int]]


def stage_spans(train: pd.DataFrame) -> Spans:
    """(first, last) global epoch of each stage, from the concatenated train.csv rows."""
    epochs = train.groupby("stage")["epoch"].agg(["min", "max"])
    return {int(s): (int(lo), int(hi)) for s, lo, hi in epochs.itertuples()}


def mark_stages(ax: Axes, spans: Spans, label: bool, order: list[str]) -> None:
    """Shade every other stage and draw the stage boundaries; with `label`, name the stages (and
    their tasks, `order`) on a top axis."""
    for s, (lo, hi) in spans.items():
        if s % 2 == 0:
            ax.axvspan(lo - 1, hi, color="0.5", alpha=0.08, lw=0)
        ax.axvline(hi, color="0.6", lw=0.8, ls=":")
    ax.set_xlim(0, max(hi for _, hi in spans.values()))
    if label:
        top = ax.secondary_xaxis("top")
        top.set_xticks(
            [(lo - 1 + hi) / 2 for lo, hi in spans.values()],
            [f"stage {s}: {order[s - 1]}" for s in spans],
        )
        top.tick_params(length=0)


def loss_figure(train: pd.DataFrame, spans: Spans, order: list[str]) -> Figure:
    """Each loss term's training loss (sum of its components, per epoch) over global epochs."""
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for column in (c for c in train.columns if c.endswith("/total")):
        term = column.removesuffix("/total")
        rows = train[["epoch", column]].dropna()
        ax.plot(rows["epoch"], rows[column], marker=".", color=TASK_COLOR.get(term), label=term)
    ax.set_yscale("log")
    ax.set_xlabel("global epoch")
    ax.set_ylabel("training loss (log scale)")
    ax.legend(title="loss term", fontsize=8)
    mark_stages(ax, spans, label=True, order=order)
    return fig


def forgetting_figure(
    val: pd.DataFrame, references: dict[str, pd.DataFrame], spans: Spans, evaluation: dict
) -> Figure:
    """One panel per task: its val metric over global epochs, its baseline and the tolerance line
    (1 - max_drop) x baseline from the end of its stage on, its single-task reference (drawn over
    its stage's epochs) and the chance level."""
    order = evaluation["sequence"]
    tasks = task_order(evaluation["tasks"], order)
    keep = 1 - evaluation["max_drop"]
    last = max(hi for _, hi in spans.values())
    fig = Figure(figsize=(9, 2.5 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), 1, sharex=True, squeeze=False)[:, 0]
    for j, (ax, (task, entry)) in enumerate(zip(axes, tasks.items(), strict=True)):
        color, column = TASK_COLOR[task], f"{task}_{entry['metric']}"
        first, own_end = spans[j + 1]
        rows = val[["epoch", column]].dropna()
        ax.plot(rows["epoch"], rows[column], marker="o", ms=3, color=color, label="sequence")
        if task in references:
            ref = references[task]
            ax.plot(ref["epoch"] + first - 1, ref[column], ls="--", color=color, alpha=0.5,
                    label="single-task reference")  # fmt: skip
        ax.plot([own_end], [entry["baseline"]], marker="*", ms=11, color=color, ls="none",
                label="baseline (end of its stage)")  # fmt: skip
        ax.hlines(keep * entry["baseline"], own_end, last, colors="k", linestyles="--", lw=1,
                  label=f"{keep:.0%} of baseline")  # fmt: skip
        ax.axhline(entry["chance"], color="0.4", ls=":", lw=1, label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{task} {METRIC_NAME[entry['metric']]}")
        ax.set_title(
            f"{task}: {entry['baseline']:.3f} after its stage, {entry['final']:.3f} final"
            f" ({entry['vs_baseline']['verdict']})",
            loc="left",
            fontsize=9,
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
        mark_stages(ax, spans, label=j == 0, order=order)
    axes[-1].set_xlabel("global epoch")
    return fig


def matrix_figure(evaluation: dict) -> Figure:
    """The forgetting matrix as a heatmap: each cell annotated with R[i][j] and coloured by the
    fraction of task j's baseline kept (grey when the task was never learned)."""
    order, rows = evaluation["sequence"], evaluation["matrix"]
    tasks = task_order(evaluation["tasks"], order)
    kept = np.full((len(rows), len(tasks)), np.nan)
    fig = Figure(figsize=(1.9 * len(tasks) + 2.2, 1.0 * len(rows) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    for i, row in enumerate(rows.values()):
        for j, (task, entry) in enumerate(tasks.items()):
            if task not in row:
                ax.text(j, i, "—", ha="center", va="center", color="0.5")
                continue
            text = f"{row[task]:.3f}"
            if entry["learned"]:
                kept[i, j] = row[task] / entry["baseline"]
                text += f"\n{kept[i, j]:.0%} kept"
            else:
                text += "\nnot learned"
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.92")
    image = ax.imshow(np.ma.masked_invalid(kept), cmap=cmap, vmin=0, vmax=1, alpha=0.75)
    ax.set_xticks(
        range(len(tasks)), [f"{t} ({METRIC_NAME[e['metric']]})" for t, e in tasks.items()]
    )
    ax.set_yticks(range(len(rows)), [f"after stage {i + 1} ({order[i]})" for i in range(len(rows))])
    ax.set_title("Forgetting matrix R[i][j]: task j after stage i", fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of baseline kept")
    return fig


def weights_figure(weights: dict[int, pd.DataFrame], strategy: str, order: list[str]) -> Figure:
    """The loss weights w_<term> a strategy logged per step, one panel per stage."""
    fig = Figure(figsize=(8, 2.6 * len(weights)), layout="constrained")
    axes = fig.subplots(len(weights), 1, squeeze=False)[:, 0]
    for ax, (stage, frame) in zip(axes, weights.items(), strict=True):
        for column in (c for c in frame.columns if c.startswith("w_")):
            term = column.removeprefix("w_")
            ax.plot(frame["step"], frame[column], color=TASK_COLOR.get(term), label=term)
        ax.set_title(f"stage {stage} ({order[stage - 1]}): {strategy} loss weights", fontsize=9)
        ax.set_xlabel("step within the stage")
        ax.set_ylabel("weight")
        ax.legend(fontsize=8)
    return fig


def write_figures(plots: Path, out: Path, evaluation: dict[str, Any]) -> dict[str, Path]:
    """Render the figures from the per-epoch CSVs under `plots` (stageN/, reference_<task>/) into
    the folder `out`, which they replace as a whole; returns caption -> path."""
    stages, order = range(1, len(evaluation["matrix"]) + 1), evaluation["sequence"]
    train = pd.concat([pd.read_csv(plots / f"stage{s}" / "train.csv") for s in stages])
    val = pd.concat([pd.read_csv(plots / f"stage{s}" / "val.csv") for s in stages])
    references = {
        t: pd.read_csv(plots / f"reference_{t}" / "val.csv") for t in order[1 : len(stages)]
    }
    spans = stage_spans(train)
    figures = {
        "Training loss per stage": ("loss.png", loss_figure(train, spans, order)),
        "Each task's val metric over the sequence, with its tolerance line": (
            "forgetting.png",
            forgetting_figure(val, references, spans, evaluation),
        ),
        "Forgetting matrix": ("forgetting_matrix.png", matrix_figure(evaluation)),
    }
    weights = {s: read_weights(plots / f"stage{s}" / "strategy.csv") for s in stages}
    weights = {s: w for s, w in weights.items() if w is not None}
    if weights:
        figures["Loss weights over steps"] = (
            "loss_weights.png",
            weights_figure(weights, evaluation["strategy"], order),
        )
    with atomic_dir(out) as folder:
        for name, fig in figures.values():
            save_png(fig, folder / name)
    return {caption: out / name for caption, (name, _) in figures.items()}
