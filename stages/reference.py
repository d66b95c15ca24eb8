"""Stages reference2, reference3: the task of a stage learned alone, from the same fresh
initialisation as the sequence and with its own budget (the single-task reference; the first
task's is stage 1 itself).

Usage: python stages/reference.py STAGE TASK   (e.g. `2 det`: the reference of stage 2's det)
"""

import sys
from pathlib import Path

from seqmtl.config import load_config
from seqmtl.training.distributed import launch
from seqmtl.training.stage import run
from seqmtl.training.train import StagePaths, train_stage


def main() -> None:
    stage, task = int(sys.argv[1]), sys.argv[2]
    params = load_config(f"reference{stage}")
    launch(params.train.processes)
    name = f"reference_{task}"
    paths = StagePaths(
        mini=Path("data/mini"),
        previous=None,
        checkpoint=Path(f"data/checkpoints/{name}.pt"),
        snapshots=None,
        metrics=Path(f"metrics/{name}.json"),
        per_image=Path(f"data/val/{name}.json"),
        timing=Path(f"metrics/{name}_time.json"),
        plots=Path(f"plots/{name}"),
        resume=Path(f"data/resume/{name}"),
    )
    train_stage(stage, params, paths, single_task=True, tasks=[task])


if __name__ == "__main__":
    run(main)
