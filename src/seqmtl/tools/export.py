"""Keep one experiment's results in the repository: results/NAME/.

    python -m seqmtl.tools.export EXP NAME     (EXP: a DVC experiment's name or any git revision)

DVC keeps an experiment's outputs in its refs and cache, not in the working tree. This copies
the experiment's result files (`RESULTS`, those it has) and its params.yaml to results/NAME/,
renders its figures from its per-epoch CSVs into results/NAME/plots/ and writes
results/NAME/report.md linking them. The folder is replaced as a whole, atomically; nothing is
trained or evaluated again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from dvc.api import DVCFileSystem

from seqmtl.analysis.figures import write_figures
from seqmtl.analysis.report import write_report
from seqmtl.data.datasets import TASKS
from seqmtl.files import atomic_dir

RESULTS = ("data", "stage1", "stage2", "stage3", "eval", "efficiency", "gradients")
STAGES = ("stage1", "stage2", "stage3")


def export(rev: str, name: str, root: Path = Path(".")) -> Path:
    """Write the results of revision `rev` of the repository at `root` to results/`name` there;
    returns the report's path. A revision that does not exist or holds no metrics/eval.json (no
    finished evaluate stage) raises FileNotFoundError naming it."""
    fs = DVCFileSystem(str(root), rev=rev)
    if not fs.exists("metrics/eval.json"):
        raise FileNotFoundError(
            f"{rev!r}: no such experiment or revision, or no metrics/eval.json in it"
        )
    behind = stale(yaml.safe_load(fs.read_text("dvc.lock")))
    if "evaluate" in behind:
        raise ValueError(
            f"{rev!r}: {', '.join(behind)} did not run after the stages they read (a run of part "
            "of the pipeline): its eval.json is not this run's; export a run of the whole pipeline"
        )
    kept = root / "results" / name
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(kept) as out:
        fs.get_file("params.yaml", str(out / "params.yaml"))
        order = yaml.safe_load((out / "params.yaml").read_text()).get("sequence", list(TASKS))
        references = [f"reference_{task}" for task in order[1:]]
        for result in [*RESULTS, *references]:
            if fs.exists(f"metrics/{result}.json"):
                fs.get_file(f"metrics/{result}.json", str(out / f"{result}.json"))
        for curves in [*STAGES, *references]:
            if fs.exists(f"plots/{curves}"):
                fs.get(f"plots/{curves}", f"{tmp}/{curves}", recursive=True)
        evaluation = json.loads((out / "eval.json").read_text())
        evaluation.setdefault("sequence", order)  # runs evaluated before it was recorded
        efficiency = json.loads((out / "efficiency.json").read_text())
        figures = write_figures(Path(tmp), out / "plots", evaluation)
        write_report(out / "report.md", evaluation, efficiency, figures)
    return kept / "report.md"


def stale(lock: dict[str, Any]) -> list[str]:
    """The stages of a dvc.lock that read an output at other bytes than the stage that writes it
    last wrote (by md5): they did not run after it, so their outputs are an earlier run's."""
    written = {o["path"]: o.get("md5") for s in lock["stages"].values() for o in s.get("outs", [])}
    return sorted(
        name
        for name, stage in lock["stages"].items()
        if any(d["path"] in written and d.get("md5") != written[d["path"]]
               for d in stage.get("deps", []))
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="a DVC experiment's name or a git revision")
    parser.add_argument("name", help="the folder under results/, e.g. real/derpp_s0")
    args = parser.parse_args()
    try:
        print(export(args.exp, args.name))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"export: {error}") from None


if __name__ == "__main__":
    main()
