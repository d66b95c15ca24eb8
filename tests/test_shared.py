"""Two machines share one sweep through a Git remote and a DVC remote (local folders here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, TINY, ran, run, set_params

pytestmark = pytest.mark.slow


def clone(origin: Path, target: Path, storage: Path) -> Path:
    """A clone of `origin` ("a machine") whose DVC remote is `storage`."""
    run(origin.parent, "git", "clone", "-q", str(origin), str(target))
    for key, value in (("user.name", "seqmtl"), ("user.email", "seqmtl@localhost")):
        run(target, "git", "config", key, value)
    run(target, "dvc", "remote", "add", "--local", "-d", "shared", str(storage))
    return target


def test_a_sweep_split_over_two_machines_is_compared_as_one(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, project / name)
    for name in ("src", "stages", ".dvc", "conf"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("tmp", "cache"))
    set_params(project, TINY)
    run(project, "git", "init", "-q")
    run(project, "git", "add", "-A")
    run(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny")
    origin, storage = tmp_path / "origin.git", tmp_path / "storage"
    run(tmp_path, "git", "clone", "-q", "--bare", str(project), str(origin))
    first = clone(origin, tmp_path / "first", storage)
    second = clone(origin, tmp_path / "second", storage)

    # the first machine runs the whole pipeline once and shares it: Git refs and cached outputs
    assert "stage1" in ran(run(first, "dvc", "exp", "run", "-n", "first-naive"))
    run(first, "dvc", "exp", "push", "origin", "first-naive")

    # the second pulls it and starts from its workspace: stage 1 and the references are reused
    run(second, "dvc", "exp", "pull", "origin", "first-naive")
    run(second, "dvc", "exp", "apply", "first-naive")
    out = run(second, "dvc", "exp", "run", "-n", "second-replay", "-S", "strategy=replay")
    assert ran(out) == {"stage2", "stage3", "evaluate", "gradients"}
    assert "Stage 'stage1' didn't change, skipping" in out
    run(second, "dvc", "exp", "push", "origin", "second-replay")

    # either machine now compares both
    run(first, "dvc", "exp", "pull", "origin", "second-replay")
    run(first, "python", "-m", "seqmtl.tools.compare", "--name", "shared")
    comparison = json.loads((first / "results" / "comparisons" / "shared.json").read_text())
    assert set(comparison["strategies"]) == {"naive", "replay"}
