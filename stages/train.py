"""Stages stage1, stage2, stage3: learn the last of TASKS on top of the previous stage's
checkpoint (--previous), which serves the others (dvc.yaml passes the first N tasks of
`sequence`, and every path).

Usage: python stages/train.py TASK [TASK ...] --mini DIR --checkpoint FILE ...
       (e.g. `seg det`: stage 2 learns det after seg; `--help` lists the paths)
"""

from seqmtl.config import load_config
from seqmtl.training.distributed import launch
from seqmtl.training.stage import parse_paths, run
from seqmtl.training.train import StagePaths, train_stage


def main() -> None:
    paths, args = parse_paths(StagePaths, __doc__, [("tasks", {"nargs": "+"})])
    stage = len(args.tasks)
    if (paths.previous is None) != (stage == 1):
        raise ValueError(
            f"stage{stage}: --previous (the last stage's checkpoint) is given from stage 2 on, "
            "and only there"
        )
    params = load_config(f"stage{stage}")
    launch(params.train.processes)
    train_stage(stage, params, paths, tasks=args.tasks)


if __name__ == "__main__":
    run(main)
