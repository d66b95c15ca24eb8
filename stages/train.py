"""Stage stage{1,2,3}: train one task on top of the previous stage's checkpoint.

Usage: python stages/train.py STAGE   (1 = segmentation, 2 = detection, 3 = classification)
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
    params = load_config(f"stage{stage}_{TASKS[stage - 1]}")
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
    train_stage(stage, params, paths)


if __name__ == "__main__":
    run(main)
