"""A training stage killed mid-way (SIGKILL) resumes from its last resume state and ends with
the bytes of an uninterrupted run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, stage_command, tiny_params
from seqmtl.training import resume
from seqmtl.training.resume import fingerprint

OUTPUTS = (
    "data/checkpoints/stage2.pt",
    "metrics/stage2.json",
    "data/val/stage2.json",
    "plots/stage2/train.csv",
    "plots/stage2/val.csv",
    "plots/stage2/strategy.csv",
)


def project(root: Path, mini: Path, strategy: str) -> None:
    """A folder that runs stages/train.py: params (tiny, stage 2 over 4 epochs with a resume
    state after each), dvc.yaml, the mini datasets."""
    change = {"tasks": {"det": {"epochs": 4}}, "train": {"checkpoint_every": 1}}
    (root / "data").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(f"strategy={strategy}", **change)))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (root / "data" / "mini").symlink_to(mini)


def stage(root: Path, number: int) -> subprocess.Popen:
    """Stage `number` of the default order in `root`, as dvc.yaml runs it."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    return subprocess.Popen(
        stage_command(f"stage{number}", params),
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stderr


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["gradnorm", "cumulative"])
def test_a_killed_stage_resumes_to_the_bytes_of_an_uninterrupted_run(
    tiny_mini: Path, tmp_path: Path, strategy: str
) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for root in (whole, killed):
        project(root, tiny_mini, strategy)
    finish(stage(whole, 1))
    (killed / "data" / "checkpoints").mkdir()
    stage1 = "data/checkpoints/stage1.pt"
    (killed / stage1).write_bytes((whole / stage1).read_bytes())
    finish(stage(whole, 2))

    process = stage(killed, 2)
    state = killed / "data" / "resume" / "stage2" / "state.pt"
    deadline = time.monotonic() + 600
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    process.communicate()
    assert state.exists() and not (killed / "metrics" / "stage2.json").exists()

    assert "resuming after epoch" in finish(stage(killed, 2))
    for name in OUTPUTS:
        assert (killed / name).is_file() == (whole / name).is_file(), name
        if (whole / name).is_file():
            assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    snapshots = sorted(p.name for p in (whole / "data/checkpoints/stage2_epochs").iterdir())
    assert snapshots == sorted(
        p.name for p in (killed / "data/checkpoints/stage2_epochs").iterdir()
    )
    for name in snapshots:
        path = f"data/checkpoints/stage2_epochs/{name}"
        assert (killed / path).read_bytes() == (whole / path).read_bytes(), path
    assert not (killed / "data" / "resume" / "stage2").exists()


def test_a_resume_state_of_other_params_or_inputs_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "a.txt").write_text("1")
    (tmp_path / "stage1.pt").write_bytes(b"one")
    key = fingerprint("stage2", "{}", tmp_path / "stage1.pt", tmp_path / "mini")
    resume.save(tmp_path / "resume", {"fingerprint": key, "epoch": 3}, [])
    assert resume.load(tmp_path / "resume", key)[0]["epoch"] == 3
    assert fingerprint("stage2", '{"seed": 1}', tmp_path / "stage1.pt", tmp_path / "mini") != key
    (tmp_path / "stage1.pt").write_bytes(b"two")
    assert fingerprint("stage2", "{}", tmp_path / "stage1.pt", tmp_path / "mini") != key
    (tmp_path / "stage1.pt").write_bytes(b"one")
    (tmp_path / "mini" / "a.txt").write_text("22")
    other = fingerprint("stage2", "{}", tmp_path / "stage1.pt", tmp_path / "mini")
    assert other != key and resume.load(tmp_path / "resume", other) is None
    resume.clear(tmp_path / "resume")
    assert not (tmp_path / "resume").exists()
