"""Reproduction check: does `dvc repro` reproduce the results committed at a base revision?

    python -m seqmtl.tools.check [--base HEAD] [--exact] [--summary FILE] [--no-repro]

In a DVC repository (the working directory) it runs `dvc repro`, then fails when
- `dvc status` is not clean afterwards (but for the always-run `sources` stage),
- a second `dvc repro` runs any stage (but `sources`),
- a checked metric (`CHECKED`: the primary metric of every stage and reference, the forgetting
  matrix, drops, verdicts, forgetting and BWT, the BatchNorm drift) differs from the base
  revision's by more than its tolerance, or appeared or disappeared.
Tolerances come from results/tolerances/tolerance.json, measured by `seqmtl tolerance`
(the default pipeline under perturbed rounding): a number may move by its `tolerance`; a verdict
measured "stable" must match, one that "varies" is shown only; a checked metric with no
measurement must match exactly. Everything else is shown, never compared: the timing files
(`TIMING`) measure the machine; secondary metrics (precision, per-class AP, ...) follow the
primary ones; the gradient statistics (`GRADIENTS`) are noisy estimates whose spread under the
same perturbations results/tolerances/tolerance.json records on a log scale.
`--exact` (one machine, the same bytes) requires every metric, timing files aside, to equal the
digits stored, and dvc.lock to equal the base revision's. `dvc metrics diff` against the base,
as markdown, goes to `--summary` (for example $GITHUB_STEP_SUMMARY) and to stdout. Exit status
0 when everything holds, 1 otherwise.
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

import torch

TIMING = ("*_time.json", "efficiency.json")
GRADIENTS = "metrics/gradients.json"
PRIMARY = ("final.seg.miou", "final.det.map50", "final.cls.top1")
CHECKED = {
    "metrics/stage*.json": PRIMARY,
    "metrics/reference_*.json": PRIMARY,
    "metrics/eval.json": (
        "matrix.*",
        "tasks.*.baseline",
        "tasks.*.final",
        "tasks.*.vs_*.absolute",
        "tasks.*.vs_*.relative",
        "tasks.*.vs_*.verdict",
        "tasks.*.vs_reference.value",
        "forgetting.*",
        "bwt",
        "passed.*",
        "batchnorm.tasks.*.*",
    ),
}
TOLERANCES = Path("results/tolerances/tolerance.json")
ALWAYS_RUN = ("sources",)  # dvc.yaml's always_changed stages: they run on every `dvc repro`


def dvc(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Standard output of a dvc command, run in `cwd` with `env` added to the environment; a
    failing command raises with all its output.

    DVC and the stages it runs use this interpreter's environment (first on PATH)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {}), "PATH": path},
    )
    if result.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def stages_run(output: str) -> list[str]:
    """Names of the stages a `dvc repro` output says it ran, but for `ALWAYS_RUN`."""
    names = [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]
    return [name for name in names if name not in ALWAYS_RUN]


def status_clean(status: dict[str, Any]) -> bool:
    """Whether `dvc status --json` reports nothing but the `ALWAYS_RUN` stages."""
    return all(stage in ALWAYS_RUN and change == ["always changed"]
               for stage, change in status.items())  # fmt: skip


def is_timing(path: str) -> bool:
    """Whether a metrics file measures the machine (never compared)."""
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in TIMING)


def is_checked(path: str, key: str) -> bool:
    """Whether metric `key` of metrics file `path` is compared (see `CHECKED`)."""
    return any(
        fnmatch.fnmatch(path, files) and any(fnmatch.fnmatch(key, k) for k in keys)
        for files, keys in CHECKED.items()
    )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, as DVC names nested metrics and params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def checked_metrics(root: Path) -> dict[str, Any]:
    """Every checked metric, and every number of the gradient statistics, of the metrics files
    under `root`, keyed `<file>:<key>`."""
    found = {}
    for file in sorted((root / "metrics").glob("*.json")):
        path = file.relative_to(root).as_posix()
        for key, value in flatten(json.loads(file.read_text())).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if is_checked(path, key) or (path == GRADIENTS and number):
                found[f"{path}:{key}"] = value
    return found


def metric_differences(
    diff: dict[str, dict[str, Any]], tolerances: dict[str, Any] | None
) -> list[str]:
    """Failures in a `dvc metrics diff --json` result. With `tolerances` (the `metrics` of
    results/tolerances/tolerance.json): the checked metrics, each against its measurement; without
    (exact): every metric but the timing files'. A metric that appeared or disappeared fails."""
    failures = []
    for path, metrics in sorted(diff.items()):
        if is_timing(path):
            continue
        for key, change in sorted(metrics.items()):
            if tolerances is not None and not is_checked(path, key):
                continue
            old, new = change.get("old"), change.get("new")
            measured = (tolerances or {}).get(f"{path}:{key}", {})
            numbers = all(isinstance(v, int | float) for v in (old, new))
            within = numbers and abs(new - old) <= measured.get("tolerance", 0.0)
            if not (within or measured.get("varies")):
                failures.append(f"{path}: {key}: committed {old!r}, reproduced {new!r}")
    return failures


def check(base: str, exact: bool, repro: bool) -> tuple[list[str], str]:
    """Run the checks; return the failures and the markdown metrics diff."""
    failures = []
    if repro:
        dvc("repro")
    status = json.loads(dvc("status", "--json"))
    if not status_clean(status):
        failures.append(f"`dvc status` is not clean after `dvc repro`:\n{status}")
    again = stages_run(dvc("repro"))
    if again:
        failures.append(f"a second `dvc repro` ran {', '.join(again)}")
    diff = json.loads(dvc("metrics", "diff", base, "--json") or "{}")
    tolerances = None
    if not exact:
        tolerances = json.loads(TOLERANCES.read_text())["metrics"] if TOLERANCES.is_file() else {}
    failures += metric_differences(diff, tolerances)
    if exact and subprocess.run(["git", "diff", "--quiet", base, "--", "dvc.lock"]).returncode:
        failures.append(f"dvc.lock differs from {base}'s: some output's bytes changed")
    return failures, dvc("metrics", "diff", base, "--md", "--precision", "6")


def torch_note(tolerances: Path) -> str:
    """A line saying so where the installed torch is not the one `tolerances` were measured
    with (their rounding, and so the spreads, belong to that version); else ''."""
    if not tolerances.is_file():
        return ""
    measured = json.loads(tolerances.read_text())["machine"]["torch"]
    if measured == torch.__version__:
        return ""
    return (
        f"\nNote: torch {torch.__version__} is installed; the tolerances were measured with "
        f"torch {measured} (constraints.txt pins the version the results were made with).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="revision holding the expected results")
    parser.add_argument("--exact", action="store_true",
                        help="every metric equal, dvc.lock unchanged (one machine)")  # fmt: skip
    parser.add_argument("--summary", type=Path, help="append the markdown report to this file")
    parser.add_argument("--no-repro", dest="repro", action="store_false",
                        help="check the workspace as it is")  # fmt: skip
    args = parser.parse_args()
    failures, table = check(args.base, args.exact, args.repro)
    verdict = "FAILED" if failures else "passed"
    mode = "exact" if args.exact else f"checked metrics, tolerances of {TOLERANCES}"
    report = (
        f"## Reproduction check {verdict}\n\n"
        f"Metrics against `{args.base}` ({mode}; timing files {', '.join(TIMING)} are shown, "
        f"not compared):\n\n{table or 'no metric changed'}\n{torch_note(TOLERANCES)}"
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
