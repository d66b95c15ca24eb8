"""The DVC pipeline end to end on a tiny synthetic config, in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"n_train": 12, "n_val": 6, "size": 64}},
    "subsample": {"n_train": 8, "n_val": 4},
    "stage1": {"epochs": 2, "batch_size": 4, "image_size": 64},
    "stage2": {"epochs": 2, "batch_size": 4, "image_size": 64},
    "stage3": {"epochs": 2, "batch_size": 4, "image_size": 64},
    "train": {"eval_every": 1, "checkpoint_every": 1},
}


def merge(base: dict, change: dict) -> dict:
    """`base` with `change` merged in recursively."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


def run(repo: Path, *args: str) -> str:
    """Run a command in `repo` with this interpreter's environment first on PATH; its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def set_params(repo: Path, change: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), change)))


def ran(output: str) -> set[str]:
    """Names of the stages that `dvc repro` ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project with the tiny params, reproduced once."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("src", "stages", ".dvc"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("tmp", "cache"))
    set_params(root, TINY)
    run(root, "git", "init", "-q")
    run(root, "dvc", "repro")
    return root


def test_first_repro_writes_every_output(repo: Path) -> None:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["seg"]["train"]["images"] == 8 and data["cls"]["val"]["images"] == 4
    final = json.loads((repo / "metrics" / "stage3.json").read_text())["final"]
    assert set(final) == {"seg", "det", "cls"}
    assert (repo / "data" / "checkpoints" / "stage3.pt").is_file()
    assert len(list((repo / "data" / "checkpoints" / "stage2_epochs").glob("*.pt"))) == 2


def test_second_repro_does_nothing(repo: Path) -> None:
    assert ran(run(repo, "dvc", "repro")) == set()
    assert "up to date" in run(repo, "dvc", "status")


def test_param_changes_rerun_only_what_reads_them(repo: Path) -> None:
    set_params(repo, {"stage3": {"epochs": 1}})
    assert ran(run(repo, "dvc", "repro")) == {"stage3_cls"}
    set_params(repo, {"strategy": "replay"})
    assert ran(run(repo, "dvc", "repro")) == {"stage2_det", "stage3_cls"}
    set_params(repo, {"subsample": {"n_val": 3}})
    assert "download" not in ran(run(repo, "dvc", "repro", "subsample"))
