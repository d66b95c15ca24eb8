"""Stage download: the raw official layouts under data/raw, generated or downloaded.

data.source: synthetic -> a seeded generated dataset in the official layouts (offline);
             download  -> the official archives, or those of data.mirror (a URL or a folder).
"""

from pathlib import Path

from seqmtl.config import load_config
from seqmtl.data.download import fetch_all
from seqmtl.data.synthetic import generate
from seqmtl.training.stage import run


def main() -> None:
    params = load_config("download")
    cfg, raw = params.data, Path("data/raw")
    if cfg.source == "synthetic":
        syn = cfg.synthetic
        generate(raw, params.seed, syn.n_train, syn.n_val, syn.size)
    else:
        fetch_all(raw, Path("data/archives"), cfg.mirror)


if __name__ == "__main__":
    run(main)
