"""seqmtl curve: the learning curve read from committed runs, refused across val sets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from seqmtl.tools.curve import METRICS, learning_curve, plot, read_run

VAL = {"images": 200, "boxes": 1100, "boxes_per_class": {"person": 700}}


def commit_run(repo: Path, seed: int, n_train: int, map50: float, val_seed: int | None = 0) -> str:
    """Commit one reference run's files (params, data counts, metrics) to `repo`; returns the
    commit."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = seed
    params["subsample"].update(n_train=n_train, n_val=200, val_seed=val_seed)
    params["data"]["mirror"] = f"/somewhere/{seed}"
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    data = {"det": {"train": {"images": n_train, "boxes": 5 * n_train}, "val": VAL}}
    (repo / "metrics" / "data.json").write_text(json.dumps(data))
    final = {"det": {metric: map50 / (k + 1) for k, metric in enumerate(METRICS)}}
    (repo / "metrics" / "reference_det.json").write_text(json.dumps({"final": final}))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", f"s{seed} n{n_train}"], cwd=repo, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_curve_over_sizes_and_seeds(repo: Path, tmp_path: Path) -> None:
    specs = [(s, n, 0.1 * s + n / 1000) for s in (0, 1, 2) for n in (120, 240)]
    runs = [read_run(commit_run(repo, *spec), repo) for spec in specs]
    curve = learning_curve(runs)
    assert curve["val"] == {**VAL, "val_seed": 0}
    assert [(r["n_train"], r["seed"]) for r in curve["runs"]] == sorted((n, s) for s, n, _ in specs)
    map50 = curve["by_size"]["240"]["map50"]
    assert map50["n"] == 3 and map50["mean"] == pytest.approx(0.1 + 0.24)
    assert map50["std"] == pytest.approx(0.1)
    out = tmp_path / "curve.png"
    plot(curve, out)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_runs_on_different_val_sets_are_refused(repo: Path) -> None:
    first = read_run(commit_run(repo, 0, 120, 0.1), repo)
    other = read_run(commit_run(repo, 1, 240, 0.2), repo)
    other["params"]["tasks"]["det"]["lr"] = 1.0
    with pytest.raises(ValueError, match="differ in more than seed"):
        learning_curve([first, other])
    unfixed = read_run(commit_run(repo, 0, 120, 0.1, val_seed=None), repo)
    with pytest.raises(ValueError, match="val_seed is null"):
        learning_curve([unfixed, first])


def test_a_run_without_the_reference_is_named(repo: Path) -> None:
    commit_run(repo, 0, 120, 0.1)
    with pytest.raises(FileNotFoundError, match="no-such-exp"):
        read_run("no-such-exp", repo)
