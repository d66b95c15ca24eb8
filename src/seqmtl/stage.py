"""What every stage script shares: reading params.yaml and failing with one clear message."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from seqmtl.runtime import keep_freed_memory

PARAMS = Path("params.yaml")


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    """The parsed params.yaml."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main (with `keep_freed_memory`); a bad input or parameter ends it with one
    line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()
    try:
        main()
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
