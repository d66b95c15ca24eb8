"""The numbers of a sequence's evaluation: forgetting matrix, drops and verdicts, forgetting and
backward transfer, and the efficiency of the final model.

Notation: the tasks are learned in stages 1..T (seg, det, cls), and R[i][j] is task j's primary
metric (seg mIoU, det mAP@.5, cls top-1) on its val split at the end of stage i, for j <= i
(0-based in code). All these metrics lie in [0, 1]; values are kept to 6 decimals, the precision
of the stage metrics.

- Baseline of task j: R[j][j], its metric right after its own stage. Final: R[T][j].
- Drop against a baseline b: absolute b - final, relative (b - final) / b, with the relative
  drop's 95 % paired-bootstrap interval over the val images (`seqmtl.analysis.bootstrap`). The task
  passes when the interval's upper end is at most `max_drop`, fails when its lower end is above
  it, and is undecided otherwise.
- Near chance: a value v with v - chance <= margin * (1 - chance), i.e. covering at most `margin`
  of the way from the chance level to a perfect 1. A task whose baseline is near chance was never
  learned: its verdict is "not learned", never a pass, and its relative drop is not defined.
- Single-task reference: the same initialisation trained on the task alone with its stage's
  budget (for the first task, stage 1 itself); the final metric is compared with it as with the
  baseline.
- Forgetting of task j < T (Chaudhry et al. 2018): f_j = max over l in j..T-1 of R[l][j] - R[T][j],
  the loss from the best value it had before the last stage; mean forgetting is the mean over j < T.
- Backward transfer (Lopez-Paz & Ranzato 2017, GEM): BWT = mean over j < T of R[T][j] - R[j][j];
  negative means forgetting. Both are in absolute metric units.
- BatchNorm drift of task j < T: the final weights evaluated once more with the BatchNorm running
  statistics of the end of stage j + 1 (its own) give O_j; its drop R[j][j] - R[T][j] splits into
  weight drift R[j][j] - O_j and statistics drift O_j - R[T][j].
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seqmtl.analysis.timing import inference_timings
from seqmtl.files import file_digest
from seqmtl.runtime import machine, peak_memory_mb
from seqmtl.tasks.registry import Classification, Detection, Segmentation

PRIMARY = {task.name: task.primary for task in (Segmentation, Detection, Classification)}
METRIC_NAME = {"miou": "mIoU", "map50": "mAP@.5", "top1": "top-1"}
DIGITS = 6

Matrix = list[list[float]]


def sequence(stages: list[dict[str, Any]]) -> list[str]:
    """The tasks in the order the stages learned them (each stage's metrics name its `task`)."""
    return [stage["task"] for stage in stages]


def forgetting_matrix(stages: list[dict[str, Any]]) -> Matrix:
    """R[i][j] from the stage metrics (metrics/stage{i+1}.json): the primary metric of the task
    learned j-th in stage i + 1's final scores, for j <= i."""
    order = sequence(stages)
    return [
        [stage["final"][task][PRIMARY[task]] for task in order[: i + 1]]
        for i, stage in enumerate(stages)
    ]


def forgetting(matrix: Matrix) -> list[float]:
    """f_j = max_{j <= l < T} R[l][j] - R[T][j] for every task j learned before the last stage."""
    last = matrix[-1]
    return [
        round(max(row[j] for row in matrix[j:-1]) - last[j], DIGITS) for j in range(len(last) - 1)
    ]


def backward_transfer(matrix: Matrix) -> float:
    """BWT = mean over j < T of R[T][j] - R[j][j]."""
    last = matrix[-1]
    return round(statistics.fmean(last[j] - matrix[j][j] for j in range(len(last) - 1)), DIGITS)


def near_chance(value: float, chance: float, margin: float) -> bool:
    """value - chance <= margin * (1 - chance) (both sides to 6 decimals)."""
    return round(value - chance, DIGITS) <= round(margin * (1 - chance), DIGITS)


def compare(
    baseline: float,
    final: float,
    chance: float,
    margin: float,
    interval: dict[str, Any],
) -> dict[str, Any]:
    """The drop from `baseline` to `final` with its bootstrap `interval` (`bootstrap.drop_interval`)
    and verdict: "not learned" when the baseline is near chance, else the interval's verdict."""
    absolute = round(baseline - final, DIGITS)
    if near_chance(baseline, chance, margin):
        return {"absolute": absolute, "relative": None, "verdict": "not learned"}
    return {
        "absolute": absolute,
        "relative": round(absolute / baseline, DIGITS),
        "interval": [interval["low"], interval["high"]],
        "verdict": interval["verdict"],
        "images": interval["images"],
        "images_for_2.5%": interval["images_for_target"],
    }


def evaluate_sequence(
    stages: list[dict[str, Any]],
    references: dict[str, dict[str, Any]],
    intervals: dict[str, dict[str, dict[str, Any]]],
    max_drop: float,
    chance_margin: float,
    parameters: int,
) -> dict[str, Any]:
    """The deterministic evaluation (metrics/eval.json) from the stage metrics in order, per task
    the metrics of its single-task reference, per task the bootstrap intervals of its drop
    against the baseline and the reference (`intervals[task]["vs_baseline" | "vs_reference"]`),
    and the final model's parameter count. Chance levels come from the last stage; tasks are
    read in the order they were learned (`sequence`)."""
    order, matrix = sequence(stages), forgetting_matrix(stages)
    chance = stages[-1]["chance"]
    tasks = {}
    for j, task in enumerate(order):
        baseline, final = matrix[j][j], matrix[-1][j]
        reference = references[task]["final"][task][PRIMARY[task]]
        tasks[task] = {
            "metric": PRIMARY[task],
            "chance": chance[task],
            "baseline": baseline,
            "final": final,
            "learned": not near_chance(baseline, chance[task], chance_margin),
            "final_near_chance": near_chance(final, chance[task], chance_margin),
            "vs_baseline": compare(
                baseline, final, chance[task], chance_margin, intervals[task]["vs_baseline"]
            ),
            "vs_reference": {"value": reference}
            | compare(
                reference, final, chance[task], chance_margin, intervals[task]["vs_reference"]
            ),
        }
    per_task = dict(zip(order, forgetting(matrix), strict=False))
    return {
        "strategy": stages[-1]["strategy"],
        "sequence": order,
        "max_drop": max_drop,
        "chance_margin": chance_margin,
        "tasks": tasks,
        "matrix": {
            f"stage{i + 1}": dict(zip(order, row, strict=False)) for i, row in enumerate(matrix)
        },
        "forgetting": per_task | {"mean": round(statistics.fmean(per_task.values()), DIGITS)},
        "bwt": backward_transfer(matrix),
        "parameters": parameters,
        "passed": {
            key: sum(entry[key]["verdict"] == "pass" for entry in tasks.values())
            for key in ("vs_baseline", "vs_reference")
        },
        "undecided": {
            key: sum(entry[key]["verdict"] == "undecided" for entry in tasks.values())
            for key in ("vs_baseline", "vs_reference")
        },
    }


RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def running_statistics(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The BatchNorm running statistics in a state dict."""
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] in RUNNING_STATISTICS}


def batchnorm_drift(
    model: nn.Module,
    own: dict[str, dict[str, Tensor]],
    score: Callable[[nn.Module, str], float],
    evaluation: dict[str, Any],
) -> dict[str, dict[str, Any] | None]:
    """Per old task j (`own` maps it to the running statistics its own stage ended with): its
    baseline, O_j = `score(model, j)` with those statistics loaded into `model`, its final value,
    and the split of its drop into weight drift (baseline - O_j) and statistics drift
    (O_j - final). Where the statistics equal the model's (the frozen policy), O_j is the final
    value, not recomputed; where they do not fit the model (another architecture), None. The
    model's own statistics are restored."""
    current = {k: v.clone() for k, v in running_statistics(model.state_dict()).items()}
    drift: dict[str, dict[str, Any] | None] = {}
    for task, statistics_j in own.items():
        entry = evaluation["tasks"][task]
        if statistics_j.keys() != current.keys():
            drift[task] = None
            continue
        if all(torch.equal(statistics_j[k].cpu(), current[k].cpu()) for k in current):
            value = entry["final"]
        else:
            model.load_state_dict(statistics_j, strict=False)
            value = round(score(model, task), DIGITS)
            model.load_state_dict(current, strict=False)
        drift[task] = {
            "baseline": entry["baseline"],
            "own_statistics": value,
            "final": entry["final"],
            "weight_drift": round(entry["baseline"] - value, DIGITS),
            "statistics_drift": round(value - entry["final"], DIGITS),
        }
    return drift


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of the model (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def inference_efficiency(
    model: nn.Module, device: torch.device, image_size: int, rounds: int
) -> dict[str, Any]:
    """The final model's inference at image_size x image_size, batch 1, every task's outputs and
    no detection decoding: `seqmtl.analysis.timing.inference_timings` over `rounds` interleaved
    rounds (its inference copy, that copy's bare backbone, the model as trained), with the
    machine and the peak memory (GPU allocated on cuda, else the process's peak RSS)."""
    timings = inference_timings(model.to(device), device, image_size, rounds)
    return timings | {
        "machine": machine(device),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }


def read_timing(metrics: Path, name: str) -> dict[str, Any] | None:
    """`metrics`/`name`_time.json if it timed the run that wrote `metrics`/`name`.json, else None.

    The timing files are not declared outputs (they differ run to run), so a stage that DVC
    restores from its run cache leaves in place the timing of whichever run wrote it last; the
    digest of its metrics file, recorded beside the times, tells the two apart."""
    timing = json.loads((metrics / f"{name}_time.json").read_text())
    return timing if timing.get("metrics_md5") == file_digest(metrics / f"{name}.json") else None


def efficiency_summary(
    stage_timings: dict[str, dict[str, Any] | None],
    reference_timings: dict[str, dict[str, Any] | None],
    inference: dict[str, Any],
) -> dict[str, Any]:
    """The non-deterministic numbers (metrics/efficiency.json): each training run's seconds, peak
    memory, device and threads (from `read_timing`) with the total seconds and the largest peak,
    for the stages and for the single-task references; and the final model's inference. A run
    whose timing is None (restored from DVC's run cache, not timed here) is listed under
    `untimed` and left out of the totals."""

    def summary(timings: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
        runs = {
            name: {key: t[key] for key in ("train_seconds", "peak_memory_mb", "device", "threads")}
            for name, t in timings.items()
            if t is not None
        }
        return {
            "runs": runs,
            "untimed": [name for name, t in timings.items() if t is None],
            "total_seconds": round(sum(r["train_seconds"] for r in runs.values()), 2),
            "max_peak_memory_mb": max((r["peak_memory_mb"] for r in runs.values()), default=None),
        }

    return {
        "training": summary(stage_timings),
        "references": summary(reference_timings),
        "inference": inference,
    }
