"""Shared fixtures and helpers: a tiny synthetic dataset in the raw and mini layouts, the real
mirror, commands run in a copy of the project."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqmtl.config import Config, compose, declared, parse, templated
from seqmtl.data.subsample import subsample
from seqmtl.data.synthetic import COCO_FIRST_TEN, generate
from seqmtl.tools.check import stages_run

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("SEQMTL_MIRROR", REPO.parent / "shared" / "data" / "mirror"))

TINY = {
    "data": {"synthetic": {"n_train": 12, "n_val": 6, "size": 64}},
    "subsample": {"n_train": 8, "n_val": 4},
    "tasks": {
        task: {"epochs": 2, "batch_size": 4, "image_size": 64} for task in ("seg", "det", "cls")
    },
    "train": {"eval_every": 1, "checkpoint_every": 1},
    "gradients": {"batch_small": 2, "batch_big": 4, "projection_dim": 1024},
    "evaluate": {"latency": {"image_size": 64, "rounds": 2}},
}


def run(repo: Path, *args: str) -> str:
    """Run a command in `repo` with this interpreter's environment first on PATH; its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def stage_command(name: str, params: dict) -> list[str]:
    """Stage `name`'s command as dvc.yaml gives it (templates resolved with `params`), run with
    this interpreter on the repository's script; relative paths as dvc repro would use them."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["cmd"]
    python, script, *args = shlex.split(templated(cmd, params))
    assert python == "python", cmd
    return [sys.executable, str(REPO / script), *args]


def tiny_params(*overrides: str, **change: object) -> dict:
    """The default composition with `overrides` (as `dvc exp run -S`), TINY merged in, on the
    CPU without pretrained weights, then `change` merged in."""
    params = merge(compose(list(overrides), REPO / "conf"), TINY)
    return merge(params, {"device": "cpu", "model": {"pretrained": False}, **change})


def stage_config(params: dict, stage: str) -> Config:
    """`params` as dvc.yaml's `stage` sees them: the params it declares, no other."""
    return parse(declared(params, stage, REPO / "dvc.yaml"), stage)


def set_params(repo: Path, change: dict) -> None:
    """`change` merged into the copy's params.yaml (what `dvc repro` reads) and, where it has one,
    into its conf/config.yaml (what `dvc exp run` composes params.yaml from)."""
    for path in (repo / "params.yaml", repo / "conf" / "config.yaml"):
        if path.is_file():
            path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), change)))


def ran(output: str) -> set[str]:
    """Names of the stages that `dvc repro` ran, but for the always-run `sources`."""
    return set(stages_run(output))


def merge(base: dict, change: dict) -> dict:
    """`base` with `change` merged in recursively."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic raw layouts: 12 train + 6 val images per dataset, about 64 px."""
    raw = tmp_path_factory.mktemp("tiny") / "raw"
    generate(raw, seed=0, n_train=12, n_val=6, size=64)
    return raw


@pytest.fixture(scope="session")
def tiny_mini(tiny_raw: Path) -> Path:
    """The mini layouts subsampled from `tiny_raw`: 10 train + 5 val images per task."""
    mini = tiny_raw.parent / "mini"
    subsample(tiny_raw, mini, seed=0, n_train=10, n_val=5, det_classes=list(COCO_FIRST_TEN))
    return mini


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The real-data mirror; tests using it skip where it is absent."""
    if not (MIRROR / "SHA256SUMS").is_file():
        pytest.skip(f"no real-data mirror at {MIRROR} (set SEQMTL_MIRROR)")
    return MIRROR
