"""Stage evaluate: forgetting matrix, drops and verdicts, efficiency, figures and the report.

Reads, by stage name (stage1-3, reference_<task>): the final metrics and *_time.json under
--metrics, every final evaluation's per-image statistics under --per-image (the drops' bootstrap
intervals), the per-epoch CSVs under --plots, the final checkpoint and the earlier stages'
checkpoints under --checkpoints (whose BatchNorm statistics the old tasks are scored with once
more). Writes --eval (deterministic), --efficiency (timings and memory), the figures into
--figures and --report.

Usage: python stages/evaluate.py --mini DIR --checkpoints DIR --per-image DIR --metrics DIR
       --plots DIR --eval JSON --efficiency JSON --report MD --figures DIR
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from seqmtl.analysis.bootstrap import (
    drop_interval,
    image_count,
    once_per_draw,
    resamples,
    task_scorer,
)
from seqmtl.analysis.evaluate import (
    PRIMARY,
    batchnorm_drift,
    count_parameters,
    efficiency_summary,
    evaluate_sequence,
    inference_efficiency,
    read_timing,
    running_statistics,
)
from seqmtl.analysis.figures import write_figures
from seqmtl.analysis.report import write_report
from seqmtl.config import Evaluate, load_config
from seqmtl.data.datasets import build_dataset, collate, task_image_sizes
from seqmtl.files import write_json
from seqmtl.runtime import resolve_device
from seqmtl.tasks.registry import build_tasks
from seqmtl.training.checkpoints import load_checkpoint
from seqmtl.training.stage import parse_paths, run


@dataclass(frozen=True)
class Paths:
    mini: Path
    checkpoints: Path
    per_image: Path
    metrics: Path
    plots: Path
    eval: Path
    efficiency: Path
    report: Path
    figures: Path


def intervals(
    names: list[str], order: list[str], per_image_folder: Path, mini: Path, cfg: Evaluate, seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task, the bootstrap intervals of its relative drop from its baseline (the end of its
    own stage) and from its single-task reference to the end of the sequence; the same seeded
    resamples of its val images score all three models. `order`: the tasks of the stages
    `names`, in order; their per-image statistics are `per_image_folder`/<name>.json."""
    boot = cfg.bootstrap
    references = {order[0]: names[0]} | {t: f"reference_{t}" for t in order[1:]}
    per_image = {
        name: json.loads((per_image_folder / f"{name}.json").read_text())
        for name in [*names, *references.values()]
    }
    result = {}
    for j, task in enumerate(order):
        gt = mini / "det" / "annotations" / "instances_val.json" if task == "det" else None
        runs = {"baseline": names[j], "final": names[-1], "reference": references[task]}
        score = {k: task_scorer(task, per_image[name][task], gt) for k, name in runs.items()}
        score["final"] = once_per_draw(score["final"])  # scored against baseline and reference
        count = boot.det_resamples if task == "det" else boot.resamples
        draws = resamples(image_count(per_image[names[-1]][task]), count, seed + j)
        result[task] = {
            f"vs_{k}": drop_interval(score[k], score["final"], draws, cfg.max_drop)
            for k in ("baseline", "reference")
        }
    return result


def main() -> None:
    paths, _ = parse_paths(Paths, __doc__)
    params = load_config("evaluate")
    cfg = params.evaluate
    order = params.sequence
    names = [f"stage{s}" for s in range(1, len(order) + 1)]

    def read(name: str) -> dict[str, Any]:
        return json.loads((paths.metrics / f"{name}.json").read_text())

    stages = [read(name) for name in names]
    references = {order[0]: stages[0]} | {t: read(f"reference_{t}") for t in order[1:]}
    mini, device = paths.mini, resolve_device(params.device)
    model, _ = load_checkpoint(paths.checkpoints / f"{names[-1]}.pt")
    model.to(device)
    evaluation = evaluate_sequence(
        stages,
        references,
        intervals(names, order, paths.per_image, mini, cfg, params.seed),
        cfg.max_drop,
        cfg.chance_margin,
        count_parameters(model),
    )
    tasks = build_tasks(model.num_classes, params.train.score_threshold)
    sizes = task_image_sizes(params, order)
    batch_size = params.tasks[order[-1]].batch_size

    def score(model: torch.nn.Module, task: str) -> float:
        dataset = build_dataset(mini, task, "val", sizes[task], train=False)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
        return tasks[task].evaluate(model, loader, device)[PRIMARY[task]]

    own = {
        task: running_statistics(
            torch.load(paths.checkpoints / f"{name}.pt", map_location="cpu", weights_only=True)[
                "model"
            ]
        )
        for task, name in zip(order[:-1], names, strict=False)
    }
    evaluation["batchnorm"] = {
        "policy": params.model.batchnorm,
        "tasks": batchnorm_drift(model, own, score, evaluation),
    }
    inference = inference_efficiency(model, device, cfg.latency.image_size, cfg.latency.rounds)
    efficiency = efficiency_summary(
        {name: read_timing(paths.metrics, name) for name in names},
        {t: read_timing(paths.metrics, f"reference_{t}") for t in order[1:]},
        inference,
    )
    write_json(paths.eval, evaluation)
    write_json(paths.efficiency, efficiency)
    figures = write_figures(paths.plots, paths.figures, evaluation)
    write_report(paths.report, evaluation, efficiency, figures)


if __name__ == "__main__":
    run(main)
