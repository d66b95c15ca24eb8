"""The results section as markdown, generated from metrics/eval.json and metrics/efficiency.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from seqmtl.analysis.evaluate import METRIC_NAME
from seqmtl.data.datasets import task_order
from seqmtl.files import atomic_file

TASK_HEADER = [
    "Task",
    "Metric",
    "Chance",
    "After own stage",
    "Final",
    "Drop",
    "Verdict",
    "Single-task ref.",
    "Drop vs ref.",
    "Verdict vs ref.",
]


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A markdown table; `align` has one character per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def drop_text(comparison: dict[str, Any]) -> str:
    """'absolute (relative % [interval %])', the relative part a dash when it is not defined."""
    relative = comparison["relative"]
    if relative is None:
        return f"{comparison['absolute']:.3f} (—)"
    low, high = comparison["interval"]
    bounds = "—" if low is None else f"{100 * low:.1f}, {100 * high:.1f}"
    return f"{comparison['absolute']:.3f} ({100 * relative:.2f} % [{bounds}])"


def verdict_text(comparison: dict[str, Any]) -> str:
    return f"**{comparison['verdict']}**"


def machine_line(machine: dict[str, Any]) -> str:
    """ "cpu, 2 threads, AMD EPYC (AVX512)" or "cuda, NVIDIA …" from `seqmtl.runtime.machine`."""
    if machine["gpu"]:
        return f"{machine['device']}, {machine['gpu']}"
    return (f"{machine['device']}, {machine['threads']} threads, {machine['processor']} "
            f"({machine['cpu_capability']})")  # fmt: skip


def findings(evaluation: dict[str, Any]) -> list[str]:
    """Sentences on what the verdicts alone would hide: tasks never learned, tasks forgotten down to
    chance, references that learned nothing."""
    lines = []
    for task, e in task_order(evaluation["tasks"], evaluation["sequence"]).items():
        name = f"{task} {METRIC_NAME[e['metric']]}"
        if not e["learned"]:
            lines.append(
                f"**{task} was never learned**: its {name} right after its own stage, "
                f"{e['baseline']:.3f}, is at chance level ({e['chance']:.3f}); "
                "its drop against its own baseline means nothing."
            )
        elif e["final_near_chance"]:
            lines.append(
                f"**{task} is forgotten down to chance**: final {name} {e['final']:.3f} "
                f"against a chance level of {e['chance']:.3f} (it was {e['baseline']:.3f})."
            )
        if e["vs_reference"]["verdict"] == "not learned":
            lines.append(
                f"**The single-task reference did not learn {task} either** "
                f"({name} {e['vs_reference']['value']:.3f})."
            )
    return lines


def run_times(summary: dict[str, Any]) -> str:
    """Each timed run's seconds, then the runs DVC restored from its run cache (untimed; summaries
    written before runs were told apart have no such list)."""
    return ", ".join(
        [f"{name} {r['train_seconds']:.1f} s" for name, r in summary["runs"].items()]
        + [
            f"{name} restored from DVC's run cache (not timed)"
            for name in summary.get("untimed", [])
        ]
    )


def megabytes(value: float | None) -> str:
    """`value` MB, or a dash where nothing was measured."""
    return "—" if value is None else f"{value:.0f} MB"


def render_report(
    evaluation: dict[str, Any], efficiency: dict[str, Any], figures: dict[str, str]
) -> str:
    """The report; `figures` maps each caption to its image's path relative to the report."""
    order, matrix = evaluation["sequence"], evaluation["matrix"]
    tasks = task_order(evaluation["tasks"], order)
    n = len(tasks)
    limit = f"{100 * evaluation['max_drop']:g} %"
    task_rows = [
        [
            task,
            METRIC_NAME[e["metric"]],
            f"{e['chance']:.3f}",
            f"{e['baseline']:.3f}",
            f"{e['final']:.3f}",
            drop_text(e["vs_baseline"]),
            verdict_text(e["vs_baseline"]),
            f"{e['vs_reference']['value']:.3f}",
            drop_text(e["vs_reference"]),
            verdict_text(e["vs_reference"]),
        ]
        for task, e in tasks.items()
    ]
    matrix_rows = [
        [f"{i + 1} ({order[i]})"]
        + [
            "—" if t not in row else f"**{row[t]:.3f}**" if t == order[i] else f"{row[t]:.3f}"
            for t in tasks
        ]
        for i, row in enumerate(matrix.values())
    ]
    needed = (
        ", ".join(
            f"{t} {e['vs_reference']['images_for_2.5%']} (has {e['vs_reference']['images']})"
            for t, e in tasks.items()
            if e["vs_reference"]["relative"] is not None
        )
        or "—"
    )
    forgetting = task_order(evaluation["forgetting"], order)
    per_task_forgetting = ", ".join(f"{t} {v:.3f}" for t, v in forgetting.items() if t != "mean")
    training, references, inference = (
        efficiency[key] for key in ("training", "references", "inference")
    )
    devices = {f"{r['device']}, {r['threads']} threads" for r in training["runs"].values()}
    efficiency_rows = [
        ["Parameters", f"{evaluation['parameters'] / 1e6:.2f} M ({evaluation['parameters']:,})"],
        [
            "Inference",
            f"{inference['model']['median_ms']:.1f} ms per {inference['image_size']}x"
            f"{inference['image_size']} image (median; 10th to 90th percentile "
            f"{inference['model']['p10_ms']:.1f} to {inference['model']['p90_ms']:.1f} ms over "
            f"{inference['rounds']} rounds; batch {inference['batch_size']}, every task's "
            f"outputs, no detection decoding; channels_last inference copy), "
            f"{inference['model_vs_backbone']:.2f} x its bare backbone's features timed in the "
            f"same rounds; the model as trained {inference['eager']['median_ms']:.1f} ms "
            f"({machine_line(inference['machine'])})",
        ],
        [
            "Training time",
            f"{training['total_seconds']:.1f} s in all: {run_times(training)}"
            + f" ({'; '.join(sorted(devices))})",
        ],
        [
            "Single-task references",
            f"{run_times(references)} of training",
        ],
        [
            "Peak memory",
            f"training {megabytes(training['max_peak_memory_mb'])} (largest timed stage), "
            f"inference {inference['peak_memory_mb']:.0f} MB (GPU memory allocated on cuda, else "
            "the process's peak resident set)",
        ],
    ]
    found = findings(evaluation)
    batchnorm = evaluation.get("batchnorm")
    drift_rows = [
        [
            task,
            f"{d['baseline']:.3f}",
            f"{d['own_statistics']:.3f}",
            f"{d['final']:.3f}",
            f"{d['weight_drift']:+.3f}",
            f"{d['statistics_drift']:+.3f}",
        ]
        for task, d in task_order(batchnorm["tasks"] if batchnorm else {}, order).items()
        if d is not None
    ]
    parts = [
        f"# Results: strategy `{evaluation['strategy']}`",
        "*Generated by `stages/evaluate.py` from `metrics/eval.json` and "
        "`metrics/efficiency.json`; do not edit by hand.*",
        f"One model with one shared head learns {' → '.join(tasks)}, one task per stage. Each "
        "task is scored on its val split with its primary metric: right after its own stage "
        "(its baseline) and at the end of the sequence (final). The drop is baseline minus final, "
        "also relative to the baseline, with its 95 % paired-bootstrap interval over the val "
        f"images in brackets; a task passes when the interval's upper end is at most {limit}, "
        "fails when its lower end is above it, and is undecided otherwise. "
        "The stricter comparison is with the single-task reference: the same initialisation "
        f"trained on that task alone with the same budget (for {order[0]}, stage 1 itself). "
        "A task whose baseline is at chance level "
        f"(within {100 * evaluation['chance_margin']:g} % of the way from chance to a perfect "
        "score) is reported as not learned, never as a pass.",
        "## Per-task results",
        table(TASK_HEADER, task_rows, "llrrrrlrrl"),
        f"Passed (≤ {limit}): {evaluation['passed']['vs_baseline']} of {n} tasks against their "
        f"own baseline, {evaluation['passed']['vs_reference']} of {n} against the single-task "
        f"reference; undecided: {evaluation['undecided']['vs_baseline']} and "
        f"{evaluation['undecided']['vs_reference']}. Val images an interval of ±2.5 % would "
        f"need (against the reference): {needed}.",
        *(["\n".join(f"- {line}" for line in found)] if found else []),
        "## Forgetting",
        "R[i][j], task j's metric at the end of stage i (its baseline in bold):",
        table(
            ["After stage", *(f"{t} ({METRIC_NAME[e['metric']]})" for t, e in tasks.items())],
            matrix_rows,
            "l" + "r" * n,
        ),
        f"Mean forgetting {forgetting['mean']:.3f} ({per_task_forgetting}); backward transfer "
        f"BWT {evaluation['bwt']:+.3f}. Forgetting of task j (Chaudhry et al. 2018) is its best "
        "value before the last stage minus its final value; BWT (Lopez-Paz & Ranzato 2017) is "
        "the mean over the tasks before the last of final minus baseline, negative when the model "
        "forgets. Both are in metric units, averaged over the tasks before the last.",
        *(
            [
                "## BatchNorm statistics or weights",
                f"Backbone BatchNorm policy `{batchnorm['policy']}`. Each earlier task scored "
                "once more with the final weights but the BatchNorm running statistics its own "
                "stage ended with: the part of its drop that this recovers is statistics drift, "
                "the rest weight drift (both in metric units, positive when they cost the task).",
                table(
                    [
                        "Task",
                        "After own stage",
                        "Final weights, own statistics",
                        "Final",
                        "Weight drift",
                        "Statistics drift",
                    ],
                    drift_rows,
                    "lrrrrr",
                ),
            ]
            if drift_rows
            else []
        ),
        "## Efficiency",
        table(["", ""], efficiency_rows, "ll"),
        "## Figures",
        *(f"**{caption}**\n\n![{caption}]({path})" for caption, path in figures.items()),
    ]
    return "\n\n".join(parts) + "\n"


def write_report(
    path: Path,
    evaluation: dict[str, Any],
    efficiency: dict[str, Any],
    figures: dict[str, Path],
    folder: Path | None = None,
) -> None:
    """Write the report to `path` atomically, linking `figures` (caption -> path) relative to
    `folder`, the folder the report is read from (default: `path`'s own)."""
    start = path.parent if folder is None else folder
    links = {caption: os.path.relpath(figure, start) for caption, figure in figures.items()}
    with atomic_file(path) as handle:
        handle.write(render_report(evaluation, efficiency, links))
