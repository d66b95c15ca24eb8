"""Stage subsample: the raw layouts -> the mini datasets (seeded), their counts and histograms."""

from dataclasses import dataclass
from pathlib import Path

from seqmtl.config import load_config
from seqmtl.data.subsample import subsample
from seqmtl.files import write_json
from seqmtl.training.stage import parse_paths, run


@dataclass(frozen=True)
class Paths:
    raw: Path
    mini: Path
    stats: Path  # counts and class histograms (JSON)


def main() -> None:
    paths, _ = parse_paths(Paths, __doc__)
    params = load_config("subsample")
    cfg = params.subsample
    stats = subsample(
        paths.raw,
        paths.mini,
        params.seed,
        cfg.n_train,
        cfg.n_val,
        cfg.det_classes,
        cfg.val_seed,
    )
    write_json(paths.stats, stats)


if __name__ == "__main__":
    run(main)
