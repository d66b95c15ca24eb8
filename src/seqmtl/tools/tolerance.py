"""Measured reproduction tolerances: the default pipeline under perturbed floating-point rounding.

    python -m seqmtl.tools.tolerance [--margin 3] [--runs native threads-1 avx2 no-simd]
    python -m seqmtl.tools.tolerance -S KEY=VALUE ... --target STAGE ... --out FILE

Another CPU rounds differently: other SIMD widths and thread counts change the order in which
sums are accumulated, and training amplifies those last-bit differences. The same can be caused
on one machine. Each PERTURBATION sets environment variables that change the summation order
(the thread count; PyTorch's vectorised kernels via ATEN_CPU_CAPABILITY and oneDNN's via
ONEDNN_MAX_CPU_ISA, as on a CPU without AVX-512, or without SIMD at all). For each, the committed
working tree is copied to a temporary folder and `dvc repro` runs there from scratch; then the
checked metrics (`seqmtl.tools.check.CHECKED`) of every run are compared.

results/tolerances/tolerance.json gets, per checked metric (`<file>:<key>`), the value of each
run, the spread (max - min) and the tolerance = max(margin x spread, 1e-6), which the
reproduction check uses; a metric that is not a number (a verdict) is "stable" when every run
gave the same value, else "varies" (then shown, never compared). The gradient statistics are
recorded too, with their spread as log10(max / min), but not compared (see `seqmtl.tools.check`).

`-S` sets params in the copies as `dvc exp run -S` does (e.g. the real-data profile) and
`--target` reproduces only those stages and what they depend on; either measures something other
than the default pipeline, so it needs an `--out` other than results/tolerances/tolerance.json,
which the reproduction check reads.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from seqmtl.config import CONF, compose
from seqmtl.files import write_json
from seqmtl.runtime import machine
from seqmtl.tools.check import GRADIENTS, checked_metrics, dvc

PERTURBATIONS: dict[str, dict[str, str]] = {
    "native": {},
    "threads-1": {"OMP_NUM_THREADS": "1"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "no-simd": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
FLOOR = 1e-6  # one unit of the 6 decimals the metrics are stored with
DEFAULT_OUT = Path("results/tolerances/tolerance.json")


def copy_tree(target: Path, assignments: list[str]) -> None:
    """The tracked and untracked-but-not-ignored files of the working tree, copied to `target`
    with its params.yaml composed with `assignments` (`seqmtl.config.compose`, as `dvc exp run -S`
    would) and its metrics files removed
    (only what the run writes is measured), then committed there as a fresh git repository
    (DVC needs one)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if Path(name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, target / name)
    for metrics in (target / "metrics").glob("*.json"):
        metrics.unlink()
    if assignments:
        text = yaml.safe_dump(compose(assignments, target / CONF), sort_keys=False)
        (target / "params.yaml").write_text(text)
    git = ["git", "-c", "user.name=seqmtl", "-c", "user.email=seqmtl@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tolerance run"]):
        subprocess.run(git + command, cwd=target, check=True, capture_output=True)


def reproduce(
    environment: dict[str, str], assignments: list[str], targets: list[str]
) -> dict[str, Any]:
    """`dvc repro [targets]` of a fresh copy of the working tree (`copy_tree`) under
    `environment`; the checked metrics and gradient statistics it wrote."""
    with tempfile.TemporaryDirectory(prefix="seqmtl-tolerance-") as tmp:
        copy_tree(Path(tmp), assignments)
        dvc("repro", *targets, cwd=Path(tmp), env=environment)
        return checked_metrics(Path(tmp))


def spread(values: list[Any], key: str, margin: float) -> dict[str, Any]:
    """The spread and tolerance of one metric over the runs (see the module docstring)."""
    if any(v is None or isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return {"stable" if len(set(map(str, values))) == 1 else "varies": True}
    if key.startswith(f"{GRADIENTS}:"):
        positive = [v for v in values if v > 0]
        ratio = max(positive) / min(positive) if len(positive) == len(values) else math.inf
        return {"log10_spread": round(math.log10(ratio), 6) if math.isfinite(ratio) else None}
    width = max(values) - min(values)
    return {"spread": round(width, 6), "tolerance": round(max(margin * width, FLOOR), 6)}


def measure(
    runs: list[str], margin: float, assignments: list[str], targets: list[str]
) -> dict[str, Any]:
    """Run every perturbation in `runs`; the tolerance file's content."""
    results = {name: reproduce(PERTURBATIONS[name], assignments, targets) for name in runs}
    keys = sorted(set().union(*(r.keys() for r in results.values())))
    metrics = {}
    for key in keys:
        values = [results[name].get(key) for name in runs]
        metrics[key] = {"values": dict(zip(runs, values, strict=True))} | spread(
            values, key, margin
        )
    return {
        "margin": margin,
        "floor": FLOOR,
        "perturbations": {name: PERTURBATIONS[name] for name in runs},
        # where the archives came from is not recorded: a local path names this machine, and
        # the download stage checks every archive against its checksum
        "params": [a for a in assignments if not a.startswith("data.mirror=")],
        "targets": targets or "all",
        "machine": machine(torch.device("cpu")),
        "metrics": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--margin", type=float, default=3.0, help="tolerance = margin x spread")
    parser.add_argument("--runs", nargs="+", default=list(PERTURBATIONS),
                        choices=list(PERTURBATIONS))  # fmt: skip
    parser.add_argument(
        "-S", "--set-param", dest="params", action="append", default=[], metavar="KEY=VALUE",
        help="a param of the copies, as dvc exp run -S",
    )  # fmt: skip
    parser.add_argument(
        "--target", dest="targets", action="append", default=[], metavar="STAGE",
        help="reproduce only this stage and the stages it depends on",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args()
    if len(args.runs) < 2:
        sys.exit("--runs: at least two perturbations are needed to measure a spread")
    if (args.params or args.targets) and args.out in (None, DEFAULT_OUT):
        sys.exit(f"-S and --target need an --out other than {DEFAULT_OUT} (the default's)")
    args.out = args.out or DEFAULT_OUT
    try:
        compose(args.params)
    except ValueError as error:
        sys.exit(str(error))
    result = measure(args.runs, args.margin, args.params, args.targets)
    write_json(args.out, result)
    compared = sum("tolerance" in m for m in result["metrics"].values())
    print(f"{args.out}: {compared} compared metrics; widest spreads:")
    widest = sorted(
        ((m["spread"], k) for k, m in result["metrics"].items() if "spread" in m), reverse=True
    )
    for width, key in widest[:10]:
        print(f"  {key}: {width:g}")


if __name__ == "__main__":
    main()
