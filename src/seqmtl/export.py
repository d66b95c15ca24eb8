"""Keep one experiment's results in the repository: metrics/NAME/ and plots/NAME/.

    python -m seqmtl.export EXP NAME     (EXP: a DVC experiment's name or any git revision)

DVC keeps an experiment's outputs in its refs and cache, not in the working tree. This copies
the experiment's result files (`RESULTS`, those it has) to metrics/NAME/, renders its figures
from its per-epoch CSVs into plots/NAME/ and writes metrics/NAME/report.md with links that
resolve from there. Both folders are replaced as a whole, atomically; nothing is trained or
evaluated again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from dvc.api import DVCFileSystem

from seqmtl.figures import write_figures
from seqmtl.files import atomic_dir
from seqmtl.report import write_report

RESULTS = (
    "data.json",
    "stage1.json",
    "stage2.json",
    "stage3.json",
    "reference_det.json",
    "reference_cls.json",
    "eval.json",
    "efficiency.json",
    "gradients.json",
)
CURVES = ("stage1", "stage2", "stage3", "reference_det", "reference_cls")


def export(rev: str, name: str, root: Path = Path(".")) -> Path:
    """Write the results of revision `rev` of the repository at `root` to metrics/`name` and
    plots/`name` there; returns the report's path. A revision that does not exist or holds no
    metrics/eval.json (no finished evaluate stage) raises FileNotFoundError naming it."""
    fs = DVCFileSystem(str(root), rev=rev)
    if not fs.exists("metrics/eval.json"):
        raise FileNotFoundError(
            f"{rev!r}: no such experiment or revision, or no metrics/eval.json in it"
        )
    metrics, plots = root / "metrics" / name, root / "plots" / name
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(metrics) as out:
        for result in RESULTS:
            if fs.exists(f"metrics/{result}"):
                fs.get_file(f"metrics/{result}", str(out / result))
        for curves in CURVES:
            if fs.exists(f"plots/{curves}"):
                fs.get(f"plots/{curves}", f"{tmp}/{curves}", recursive=True)
        evaluation = json.loads((out / "eval.json").read_text())
        efficiency = json.loads((out / "efficiency.json").read_text())
        figures = write_figures(Path(tmp), plots, evaluation)
        write_report(out / "report.md", evaluation, efficiency, figures, metrics)
    return metrics / "report.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="a DVC experiment's name or a git revision")
    parser.add_argument("name", help="the folder under metrics/ and plots/, e.g. real/derpp")
    args = parser.parse_args()
    try:
        print(export(args.exp, args.name))
    except FileNotFoundError as error:
        raise SystemExit(f"export: {error}") from None


if __name__ == "__main__":
    main()
