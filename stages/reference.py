"""Stages reference2, reference3: the task of a stage learned alone, from the same fresh
initialisation as the sequence and with its own budget (the single-task reference; the first
task's is stage 1 itself).

Usage: python stages/reference.py STAGE TASK --mini DIR --checkpoint FILE ...
       (e.g. `2 det`: the reference of stage 2's det; `--help` lists the paths)
"""

from seqmtl.config import load_config
from seqmtl.training.distributed import launch
from seqmtl.training.stage import parse_paths, run
from seqmtl.training.train import StagePaths, train_stage


def main() -> None:
    positional = [("stage", {"type": int}), ("task", {})]
    paths, args = parse_paths(StagePaths, __doc__, positional)
    params = load_config(f"reference{args.stage}")
    launch(params.train.processes)
    train_stage(args.stage, params, paths, single_task=True, tasks=[args.task])


if __name__ == "__main__":
    run(main)
