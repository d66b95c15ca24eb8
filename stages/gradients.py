"""Stage gradients: noise scale, batch-gradient similarity, t-SNE and task interference of every
stage's training snapshots, and the loss-weight history of the strategy logs of stages 2 and 3
where present (stage 1 always trains naively).

Usage: python stages/gradients.py --mini DIR --snapshots DIR [DIR ...] --histories CSV [CSV ...]
       --metrics JSON --plots DIR
"""

from seqmtl.analysis.gradients import GradientPaths, analyse_gradients
from seqmtl.config import load_config
from seqmtl.training.stage import parse_paths, run


def main() -> None:
    paths, _ = parse_paths(GradientPaths, __doc__)
    analyse_gradients(load_config("gradients"), paths)


if __name__ == "__main__":
    run(main)
