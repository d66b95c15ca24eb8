"""Stages stage1, stage2, stage3: learn the last of TASKS on top of the previous stage's
checkpoint, which serves the others (dvc.yaml passes the first N tasks of `sequence`).

Usage: python stages/train.py TASK [TASK ...]   (e.g. `seg det`: stage 2 learns det after seg)
"""

import sys
from pathlib import Path

from seqmtl.config import load_config
from seqmtl.training.distributed import launch
from seqmtl.training.stage import run
from seqmtl.training.train import StagePaths, train_stage


def main() -> None:
    tasks = sys.argv[1:]
    stage = len(tasks)
    params = load_config(f"stage{stage}")
    launch(params.train.processes)
    paths = StagePaths(
        mini=Path("data/mini"),
        previous=Path(f"data/checkpoints/stage{stage - 1}.pt") if stage > 1 else None,
        checkpoint=Path(f"data/checkpoints/stage{stage}.pt"),
        snapshots=Path(f"data/checkpoints/stage{stage}_epochs"),
        metrics=Path(f"metrics/stage{stage}.json"),
        per_image=Path(f"data/val/stage{stage}.json"),
        timing=Path(f"metrics/stage{stage}_time.json"),
        plots=Path(f"plots/stage{stage}"),
        resume=Path(f"data/resume/stage{stage}"),
    )
    train_stage(stage, params, paths, tasks=tasks)


if __name__ == "__main__":
    run(main)
