"""Stage subsample: data/raw -> data/mini (seeded), counts and histograms -> metrics/data.json."""

from pathlib import Path

from seqmtl.config import load_config
from seqmtl.data.subsample import subsample
from seqmtl.files import write_json
from seqmtl.training.stage import run


def main() -> None:
    params = load_config("subsample")
    cfg = params.subsample
    stats = subsample(
        Path("data/raw"),
        Path("data/mini"),
        params.seed,
        cfg.n_train,
        cfg.n_val,
        cfg.det_classes,
        cfg.val_seed,
    )
    write_json(Path("metrics/data.json"), stats)


if __name__ == "__main__":
    run(main)
