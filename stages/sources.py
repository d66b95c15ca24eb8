"""Stage sources (always run): what the download stage would read, written to data/sources.json.

For data.source download: each archive's checksum (the official one, or the mirror's SHA256SUMS),
so that archives changed behind the same data.mirror rerun download and what follows, and an
unchanged mirror reruns nothing. For synthetic data: the generator, which params.yaml fixes.
"""

import sys
from pathlib import Path

from seqmtl.config import load_config
from seqmtl.data.download import source_checksums
from seqmtl.files import write_json
from seqmtl.training.stage import run


def main() -> None:
    cfg = load_config("sources").data
    if cfg.source == "synthetic":
        content = {"source": "synthetic"}
    else:
        content = {"source": "download", "archives": source_checksums(cfg.mirror)}
    write_json(Path(sys.argv[1]), content)


if __name__ == "__main__":
    run(main)
