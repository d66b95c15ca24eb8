"""Stage gradients: noise scale, batch-gradient similarity, t-SNE and task interference of the
training snapshots (data/checkpoints/stage{1,2,3}_epochs), and the loss-weight history of the
strategy logs of stages 2 and 3 where present (stage 1 always trains naively)."""

from pathlib import Path

from seqmtl.analysis.gradients import GradientPaths, analyse_gradients
from seqmtl.config import load_config
from seqmtl.training.stage import run

CHECKPOINTS = Path("data/checkpoints")


def main() -> None:
    paths = GradientPaths(
        mini=Path("data/mini"),
        snapshots=[
            path
            for stage in (1, 2, 3)
            for path in sorted((CHECKPOINTS / f"stage{stage}_epochs").glob("epoch_*.pt"))
        ],
        histories=[Path(f"plots/stage{stage}/strategy.csv") for stage in (2, 3)],
        metrics=Path("metrics/gradients.json"),
        plots=Path("plots/gradients"),
    )
    analyse_gradients(load_config("gradients"), paths)


if __name__ == "__main__":
    run(main)
