"""Stage download: the raw official layouts under data/raw, generated or downloaded.

data.source: synthetic -> a seeded generated dataset in the official layouts (offline);
             download  -> the official archives, or those of data.mirror (a URL or a folder).
"""

from pathlib import Path

from seqmtl.download import fetch_all
from seqmtl.stage import load_params, run
from seqmtl.synthetic import generate


def main() -> None:
    params = load_params()
    cfg = params["data"]
    raw = Path("data/raw")
    if cfg["source"] == "synthetic":
        syn = cfg["synthetic"]
        generate(raw, params["seed"], syn["n_train"], syn["n_val"], syn["size"])
    elif cfg["source"] == "download":
        fetch_all(raw, Path("data/archives"), cfg["mirror"])
    else:
        raise ValueError(f"data.source must be 'synthetic' or 'download', got {cfg['source']!r}")


if __name__ == "__main__":
    run(main)
