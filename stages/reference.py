"""Stages reference_det / reference_cls: one stage's task learned alone, from the same fresh
initialisation as the sequence and with that stage's budget (the single-task reference).

Usage: python stages/reference.py STAGE   (2 = detection, 3 = classification; stage 1 is its own)
"""

import sys
from pathlib import Path

from seqmtl.config import load_config
from seqmtl.data import TASKS
from seqmtl.distributed import launch
from seqmtl.stage import run
from seqmtl.train import StagePaths, train_stage


def main() -> None:
    stage = int(sys.argv[1])
    name = f"reference_{TASKS[stage - 1]}"
    params = load_config(name)
    launch(params.train.processes)
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
    train_stage(stage, params, paths, single_task=True)


if __name__ == "__main__":
    run(main)
