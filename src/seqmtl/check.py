"""Reproduction check: does `dvc repro` reproduce the results committed at a base revision?

    python -m seqmtl.check [--base HEAD] [--tolerance 0] [--summary FILE] [--no-repro]

In a DVC repository (the working directory) it runs `dvc repro`, then fails when
- `dvc status` is not clean afterwards,
- a second `dvc repro` runs any stage,
- a metric in a deterministic metrics file differs from the base revision's by more than
  `--tolerance` (absolute), or a metric appeared or disappeared,
- with tolerance 0, dvc.lock differs from the base revision's (an output's bytes changed).
Timing files (`TIMING`: wall times, throughput, memory) are shown but never compared: they
measure the machine, not the result. With tolerance 0 the metrics must be equal to the digits
stored. `dvc metrics diff` against the base, as markdown, goes to `--summary` (for example
$GITHUB_STEP_SUMMARY) and to stdout. Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TIMING = ("*_time.json", "efficiency.json")


def dvc(*args: str) -> str:
    """Standard output of a dvc command; a failing command raises with all its output.

    DVC and the stages it runs use this interpreter's environment (first on PATH)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
    )
    if result.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def stages_run(output: str) -> list[str]:
    """Names of the stages a `dvc repro` output says it ran."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def is_timing(path: str) -> bool:
    """Whether a metrics file measures the machine (never compared)."""
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in TIMING)


def metric_differences(diff: dict[str, dict[str, Any]], tolerance: float) -> list[str]:
    """Failures in a `dvc metrics diff --json` result: numbers further apart than `tolerance`,
    other values that changed, metrics that appeared or disappeared (timing files skipped)."""
    failures = []
    for path, metrics in sorted(diff.items()):
        if is_timing(path):
            continue
        for key, change in sorted(metrics.items()):
            old, new = change.get("old"), change.get("new")
            numbers = all(isinstance(v, int | float) for v in (old, new))
            if numbers and abs(new - old) <= tolerance:
                continue
            failures.append(f"{path}: {key}: committed {old!r}, reproduced {new!r}")
    return failures


def check(base: str, tolerance: float, repro: bool) -> tuple[list[str], str]:
    """Run the checks; return the failures and the markdown metrics diff."""
    failures = []
    if repro:
        dvc("repro")
    status = dvc("status")
    if "up to date" not in status:
        failures.append(f"`dvc status` is not clean after `dvc repro`:\n{status}")
    again = stages_run(dvc("repro"))
    if again:
        failures.append(f"a second `dvc repro` ran {', '.join(again)}")
    diff = json.loads(dvc("metrics", "diff", base, "--json") or "{}")
    failures += metric_differences(diff, tolerance)
    if (
        tolerance == 0
        and subprocess.run(["git", "diff", "--quiet", base, "--", "dvc.lock"]).returncode
    ):
        failures.append(f"dvc.lock differs from {base}'s: some output's bytes changed")
    return failures, dvc("metrics", "diff", base, "--md", "--precision", "6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="revision holding the expected results")
    parser.add_argument("--tolerance", type=float, default=0.0, help="absolute, per metric")
    parser.add_argument("--summary", type=Path, help="append the markdown report to this file")
    parser.add_argument("--no-repro", dest="repro", action="store_false",
                        help="check the workspace as it is")  # fmt: skip
    args = parser.parse_args()
    failures, table = check(args.base, args.tolerance, args.repro)
    verdict = "FAILED" if failures else "passed"
    report = (
        f"## Reproduction check {verdict}\n\n"
        f"Metrics against `{args.base}` (tolerance {args.tolerance:g}; timing files "
        f"{', '.join(TIMING)} are shown, not compared):\n\n{table or 'no metric changed'}\n"
    )
    if failures:
        report += "\nFailures:\n\n" + "".join(f"- {f}\n" for f in failures)
    print(report)
    if args.summary:
        with args.summary.open("a") as handle:
            handle.write(report)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
