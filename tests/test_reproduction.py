"""The project's committed results reproduce: the default pipeline, run from scratch in a copy of
the working tree, matches the committed metrics (what `make check-repro` checks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

# The same machine type gives byte-identical metrics; another CPU (other SIMD kernels, other
# rounding) moves them within the tolerances measured in results/tolerances/tolerance.json
# (docs/reproducibility.md), which the check applies by default.


def test_default_pipeline_reproduces_the_committed_results(tmp_path: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    repo = tmp_path / "repo"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "as committed"]):
        subprocess.run(git + command, cwd=repo, check=True, env=env)
    result = subprocess.run(
        [sys.executable, "-m", "seqmtl.tools.check"],
        cwd=repo, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
