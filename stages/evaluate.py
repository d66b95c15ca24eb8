"""Stage evaluate: forgetting matrix, drops and verdicts, efficiency, figures and the report.

Reads metrics/stage{1,2,3}.json and *_time.json, the single-task references (metrics/reference_*),
the per-epoch CSVs under plots/ and the final checkpoint. Writes metrics/eval.json (deterministic),
metrics/efficiency.json (timings and memory), plots/evaluate/*.png and metrics/report.md.
"""

import json
import os
from pathlib import Path
from typing import Any

from seqmtl.checkpoints import load_checkpoint
from seqmtl.data import TASKS
from seqmtl.evaluate import (
    count_parameters,
    efficiency_summary,
    evaluate_sequence,
    inference_efficiency,
)
from seqmtl.figures import write_figures
from seqmtl.files import atomic_file, write_json
from seqmtl.report import render_report
from seqmtl.runtime import resolve_device
from seqmtl.stage import load_params, run

METRICS = Path("metrics")
REPORT = METRICS / "report.md"


def read(name: str) -> dict[str, Any]:
    return json.loads((METRICS / f"{name}.json").read_text())


def main() -> None:
    params = load_params()
    cfg = params["evaluate"]
    names = [f"stage{s}" for s in range(1, len(TASKS) + 1)]
    stages = [read(name) for name in names]
    references = {TASKS[0]: stages[0]} | {t: read(f"reference_{t}") for t in TASKS[1:]}
    model, _ = load_checkpoint(
        Path(f"data/checkpoints/{names[-1]}.pt"), params, Path("data/mini"), int(params["seed"])
    )
    evaluation = evaluate_sequence(
        stages,
        references,
        float(cfg["max_drop"]),
        float(cfg["chance_margin"]),
        count_parameters(model),
    )
    latency = cfg["latency"]
    inference = inference_efficiency(
        model, resolve_device(params["device"]), int(latency["image_size"]), int(latency["repeats"])
    )
    efficiency = efficiency_summary(
        {name: read(f"{name}_time") for name in names},
        {t: read(f"reference_{t}_time") for t in TASKS[1:]},
        inference,
    )
    write_json(METRICS / "eval.json", evaluation)
    write_json(METRICS / "efficiency.json", efficiency)
    figures = write_figures(Path("plots"), Path("plots/evaluate"), evaluation)
    links = {caption: os.path.relpath(path, REPORT.parent) for caption, path in figures.items()}
    with atomic_file(REPORT) as handle:
        handle.write(render_report(evaluation, efficiency, links))


if __name__ == "__main__":
    run(main)
