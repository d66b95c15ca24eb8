"""The reproduction check's comparison rules and the tolerance measurement's arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seqmtl.tools.check import checked_metrics, is_checked, metric_differences, torch_note
from seqmtl.tools.tolerance import FLOOR, copy_tree, spread

REPO = Path(__file__).resolve().parents[1]


def change(old: object, new: object) -> dict:
    return {"old": old, "new": new}


DIFF = {
    "metrics/stage1.json": {
        "final.seg.miou": change(0.5, 0.51),
        "final.seg.pixel_acc": change(0.8, 0.2),  # secondary: shown only
    },
    "metrics/eval.json": {
        "tasks.seg.vs_baseline.verdict": change("pass", "fail"),
        "tasks.det.vs_baseline.verdict": change("pass", "fail"),
        "bwt": change(-0.1, -0.1004),
    },
    "metrics/gradients.json": {"snapshots.epoch_004.tasks.seg.noise_scale": change(5.0, 500.0)},
    "metrics/stage1_time.json": {"train_seconds": change(10.0, 99.0)},
}
TOLERANCES = {
    "metrics/stage1.json:final.seg.miou": {"spread": 0.004, "tolerance": 0.012},
    "metrics/eval.json:tasks.seg.vs_baseline.verdict": {"stable": True},
    "metrics/eval.json:tasks.det.vs_baseline.verdict": {"varies": True},
}


def test_checked_metrics_are_the_primary_and_forgetting_ones() -> None:
    assert is_checked("metrics/stage2.json", "final.det.map50")
    assert is_checked("metrics/reference_cls.json", "final.cls.top1")
    assert is_checked("metrics/eval.json", "matrix.stage3.seg")
    assert is_checked("metrics/eval.json", "tasks.cls.vs_reference.verdict")
    assert not is_checked("metrics/stage2.json", "final.det.precision")
    assert not is_checked("metrics/gradients.json", "snapshots.epoch_004.tasks.seg.noise_scale")


def test_measured_tolerances() -> None:
    failures = metric_differences(DIFF, TOLERANCES)
    # seg mIoU moved 0.01 within its 0.012; the stable verdict flipped; the varying one is
    # shown only; bwt has no measurement, so it must match exactly; the rest is not checked
    assert failures == [
        "metrics/eval.json: bwt: committed -0.1, reproduced -0.1004",
        "metrics/eval.json: tasks.seg.vs_baseline.verdict: committed 'pass', reproduced 'fail'",
    ]


def test_exact_mode_compares_everything_but_timing() -> None:
    failures = metric_differences(DIFF, None)
    assert len(failures) == 6 and not any("_time.json" in f for f in failures)


def test_spread_and_tolerance_arithmetic() -> None:
    assert spread([0.5, 0.52, 0.51], "metrics/stage1.json:final.seg.miou", 3) == {
        "spread": 0.02,
        "tolerance": 0.06,
    }
    assert spread([0.5, 0.5], "metrics/eval.json:bwt", 3)["tolerance"] == FLOOR
    assert spread(["pass", "pass"], "k", 3) == {"stable": True}
    assert spread(["pass", "fail"], "k", 3) == {"varies": True}
    grads = spread([10.0, 1000.0], "metrics/gradients.json:x", 3)
    assert grads == {"log10_spread": pytest.approx(2.0)}
    assert spread([0.0, 1.0], "metrics/gradients.json:x", 3) == {"log10_spread": None}
    assert math.isclose(spread([1, 2], "metrics/eval.json:bwt", 2)["tolerance"], 2.0)


def test_checked_metrics_of_a_run(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    stage = {"final": {"seg": {"miou": 0.4, "pixel_acc": 0.9}}, "task": "seg"}
    (tmp_path / "metrics" / "stage1.json").write_text(json.dumps(stage))
    gradients = {"snapshots": {"e": {"noise_scale": 3.0, "strategy": "naive", "list": [1]}}}
    (tmp_path / "metrics" / "gradients.json").write_text(json.dumps(gradients))
    assert checked_metrics(tmp_path) == {
        "metrics/gradients.json:snapshots.e.noise_scale": 3.0,
        "metrics/stage1.json:final.seg.miou": 0.4,
    }


def test_a_tolerance_copy_has_the_params_set_and_no_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    copy_tree(tmp_path, ["seed=3", "tasks.cls.epochs=7"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["seed"] == 3 and params["tasks"]["cls"]["epochs"] == 7
    assert params["profile"] == "synthetic"
    committed = yaml.safe_load((REPO / "params.yaml").read_text())["tasks"]["det"]
    assert params["tasks"]["det"] == committed
    assert (tmp_path / "dvc.yaml").is_file() and not list((tmp_path / "metrics").glob("*.json"))
    show = ["git", "show", "HEAD:params.yaml"]
    committed = subprocess.run(show, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert yaml.safe_load(committed.stdout) == params  # DVC sees the params set, committed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "seed=1"], "need an --out other than results/tolerances/tolerance.json"),
        (
            ["--target", "stage1", "--out", "results/tolerances/tolerance.json"],
            "need an --out other",
        ),
        (["-S", "stage9.lr=1", "--out", "x.json"], "-S stage9.lr=1: Could not override"),
    ],
)
def test_tolerance_rejects_a_changed_run_that_would_overwrite_the_default(
    args: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "seqmtl.tools.tolerance", *args],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_torch_other_than_the_tolerances_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tolerance.json"
    path.write_text(json.dumps({"machine": {"torch": torch.__version__}}))
    assert torch_note(path) == ""
    path.write_text(json.dumps({"machine": {"torch": "2.0.0"}}))
    assert f"torch {torch.__version__} is installed" in torch_note(path)
    assert "measured with torch 2.0.0" in torch_note(path)
    assert torch_note(tmp_path / "absent.json") == ""
