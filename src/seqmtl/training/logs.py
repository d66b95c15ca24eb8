"""Per-epoch and per-step logs: CSV files under plots/, read back by the figures."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd

from seqmtl.files import atomic_file


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as a CSV (columns: the union of their keys in first-seen order), atomically.

    Written here rather than with DVCLive, whose metric logs stamp every row with the wall-clock
    time: the per-epoch curves are declared outputs and must come out byte-identical."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_weights(path: Path) -> pd.DataFrame | None:
    """A strategy.csv (`write_csv` of a strategy's per-step log) holding loss weights w_<term>,
    else None (no such file, or no weights in it)."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return frame if any(c.startswith("w_") for c in frame.columns) else None
