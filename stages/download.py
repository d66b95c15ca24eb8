"""Stage download: the raw official layouts, generated or downloaded.

data.source: synthetic -> a seeded generated dataset in the official layouts (offline);
             download  -> the official archives, or those of data.mirror (a URL or a folder),
                          kept in --archives and unpacked into --raw.
"""

from dataclasses import dataclass
from pathlib import Path

from seqmtl.config import load_config
from seqmtl.data.download import fetch_all
from seqmtl.data.synthetic import generate
from seqmtl.training.stage import parse_paths, run


@dataclass(frozen=True)
class Paths:
    raw: Path  # the official layouts (the stage's output)
    archives: Path  # the downloaded archives (a cache, not an output)


def main() -> None:
    paths, _ = parse_paths(Paths, __doc__)
    params = load_config("download")
    cfg = params.data
    if cfg.source == "synthetic":
        syn = cfg.synthetic
        generate(paths.raw, params.seed, syn.n_train, syn.n_val, syn.size)
    else:
        fetch_all(paths.raw, paths.archives, cfg.mirror)


if __name__ == "__main__":
    run(main)
