"""The evaluation: forgetting arithmetic, verdicts, never-learned tasks, the report, the figures,
and the single-task reference routine on the tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import stage_config, tiny_params
from seqmtl.analysis.bootstrap import drop_interval, resamples
from seqmtl.analysis.evaluate import (
    PRIMARY,
    backward_transfer,
    batchnorm_drift,
    compare,
    efficiency_summary,
    evaluate_sequence,
    forgetting,
    forgetting_matrix,
    read_timing,
    running_statistics,
)
from seqmtl.analysis.figures import write_figures
from seqmtl.analysis.report import render_report
from seqmtl.models.model import UnifiedModel
from seqmtl.training.train import StagePaths, train_stage

CHANCE = {"seg": 0.04, "det": 0.0, "cls": 0.1}


def stage_metrics(rows: list[list[float]]) -> list[dict]:
    """Stage metrics files (as train_stage writes them) holding the matrix rows R[i]."""
    tasks = list(PRIMARY)
    return [
        {
            "task": tasks[i],
            "strategy": "naive",
            "final": {t: {PRIMARY[t]: v} for t, v in zip(tasks, row, strict=False)},
            "chance": {t: CHANCE[t] for t in tasks[: i + 1]},
        }
        for i, row in enumerate(rows)
    ]


def exact(baseline: float, final: float, max_drop: float = 0.05) -> dict:
    """The bootstrap interval of two models that score the same on every resample: the point."""
    draws = resamples(4, 3, seed=0)
    return drop_interval(lambda _: baseline, lambda _: final, draws, max_drop)


def verdict(baseline: float, final: float, chance: float = 0.1) -> str:
    return compare(baseline, final, chance, 0.05, exact(baseline, final))["verdict"]


def evaluated(rows: list[list[float]], reference: tuple[float, float, float]) -> dict:
    """evaluate_sequence on the matrix rows, single-task references scoring `reference`, with
    max_drop and chance_margin 0.05, 1000 parameters, and intervals without spread."""
    references = {
        t: {"final": {t: {PRIMARY[t]: v}}} for t, v in zip(PRIMARY, reference, strict=True)
    }
    intervals = {
        t: {
            "vs_baseline": exact(rows[j][j], rows[-1][j]),
            "vs_reference": exact(reference[j], rows[-1][j]),
        }
        for j, t in enumerate(PRIMARY)
    }
    return evaluate_sequence(stage_metrics(rows), references, intervals, 0.05, 0.05, 1000)


def test_forgetting_arithmetic_on_a_hand_made_matrix() -> None:
    rows = [[0.5], [0.7, 0.9], [0.4, 0.6, 0.8]]
    matrix = forgetting_matrix(stage_metrics(rows))
    assert matrix == rows
    # seg: best before the last stage 0.7 (after stage 2), final 0.4; det: 0.9 -> 0.6
    assert forgetting(matrix) == pytest.approx([0.3, 0.3])
    # BWT = ((0.4 - 0.5) + (0.6 - 0.9)) / 2
    assert backward_transfer(matrix) == pytest.approx(-0.2)
    evaluation = evaluated(rows, (0.5, 0.9, 0.8))
    assert evaluation["forgetting"] == pytest.approx({"seg": 0.3, "det": 0.3, "mean": 0.3})
    assert evaluation["matrix"]["stage2"] == {"seg": 0.7, "det": 0.9}
    seg = evaluation["tasks"]["seg"]
    assert (seg["baseline"], seg["final"]) == (0.5, 0.4)
    assert seg["vs_baseline"] == {"absolute": 0.1, "relative": 0.2, "interval": [0.2, 0.2],
                                  "verdict": "fail", "images": 4, "images_for_2.5%": 4}  # fmt: skip


@pytest.mark.parametrize(
    ("baseline", "final", "expected"),
    [
        (0.8, 0.76, "pass"),  # relative drop exactly 0.05
        (0.8, 0.759999, "fail"),  # 0.050001
        (1.0, 0.95, "pass"),  # 1 - 0.95 is 0.050000000000000044 in floating point
        (1.0, 0.949999, "fail"),
        (0.5, 0.6, "pass"),  # a gain is a negative drop
    ],
)
def test_verdict_flips_exactly_at_the_threshold(
    baseline: float, final: float, expected: str
) -> None:
    assert verdict(baseline, final) == expected


def test_a_task_never_learned_is_reported_as_such() -> None:
    # det stays at its chance level 0 throughout: "no drop", but nothing was learned either
    rows = [[0.6], [0.6, 0.0], [0.6, 0.0, 0.9]]
    evaluation = evaluated(rows, (0.6, 0.5, 0.9))
    det = evaluation["tasks"]["det"]
    assert det["learned"] is False and det["final_near_chance"] is True
    assert det["vs_baseline"] == {"absolute": 0.0, "relative": None, "verdict": "not learned"}
    assert det["vs_reference"]["verdict"] == "fail"  # the reference did learn it
    assert evaluation["passed"] == {"vs_baseline": 2, "vs_reference": 2}
    # within the margin: 0.1 + 0.05 * (1 - 0.1) = 0.145 is still chance for cls, 0.146 is not
    assert verdict(0.145, 0.145) == "not learned"
    assert verdict(0.146, 0.146) == "pass"
    report = render_report(evaluation, EFFICIENCY, {})
    assert "**det was never learned**" in report


EFFICIENCY = {
    "training": {
        "runs": {
            f"stage{s}": {"train_seconds": 10.0, "peak_memory_mb": 900.0, "device": "cpu",
                          "threads": 2}
            for s in (1, 2, 3)
        },
        "untimed": [],
        "total_seconds": 30.0,
        "max_peak_memory_mb": 900.0,
    },
    "references": {
        "runs": {t: {"train_seconds": 10.0, "peak_memory_mb": 900.0, "device": "cpu", "threads": 2}
                 for t in ("det", "cls")},
        "untimed": [],
        "total_seconds": 20.0,
        "max_peak_memory_mb": 900.0,
    },
    "inference": {
        "model": {"median_ms": 85.25, "p10_ms": 80.0, "p90_ms": 95.5},
        "backbone": {"median_ms": 75.0, "p10_ms": 70.0, "p90_ms": 82.0},
        "eager": {"median_ms": 120.0, "p10_ms": 110.0, "p90_ms": 130.0},
        "model_vs_backbone": 1.14, "model_vs_eager": 0.71, "image_size": 512, "batch_size": 1,
        "rounds": 20, "peak_memory_mb": 700.0,
        "machine": {"device": "cpu", "gpu": None, "processor": "Some CPU", "threads": 2,
                    "cpu_capability": "AVX2", "torch": "2.14.1"},
    },
}  # fmt: skip


def test_report_from_hand_made_metrics_holds_the_tables() -> None:
    rows = [[0.68], [0.01, 0.68], [0.007, 0.001, 0.97]]
    evaluation = evaluated(rows, (0.68, 0.6, 0.9)) | {"parameters": 3_176_878}
    report = render_report(evaluation, EFFICIENCY, {"Forgetting matrix": "../plots/m.png"})
    assert "| Task | Metric | Chance | After own stage | Final | Drop | Verdict |" in report
    assert (
        "| seg | mIoU | 0.040 | 0.680 | 0.007 | 0.673 (98.97 % [99.0, 99.0]) | **fail** |" in report
    )
    assert (
        "| cls | top-1 | 0.100 | 0.970 | 0.970 | 0.000 (0.00 % [0.0, 0.0]) | **pass** | 0.900 |"
        in report
    )
    assert "Val images an interval of ±2.5 % would need (against the reference): seg 4" in report
    assert "| 3 (cls) | 0.007 | 0.001 | **0.970** |" in report
    assert "**seg is forgotten down to chance**" in report
    assert "85.2 ms per 512x512 image (median; 10th to 90th percentile 80.0 to 95.5 ms" in report
    assert "1.14 x its bare backbone" in report and "cpu, 2 threads, Some CPU (AVX2)" in report
    assert "3.18 M" in report
    assert "![Forgetting matrix](../plots/m.png)" in report


def write_csv(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_figures_are_written_byte_identically(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    for s, task in enumerate(("seg", "det", "cls"), 1):
        write_csv(plots / f"stage{s}/train.csv",
                  f"epoch,stage,{task}/total\n{2 * s - 1},{s},1.0\n{2 * s},{s},0.5\n")  # fmt: skip
    write_csv(plots / "stage1/val.csv", "epoch,stage,seg_miou\n2,1,0.7\n")
    write_csv(plots / "stage2/val.csv", "epoch,stage,seg_miou,det_map50\n4,2,0.3,0.6\n")
    write_csv(plots / "stage3/val.csv",
              "epoch,stage,seg_miou,det_map50,cls_top1\n6,3,0.1,0.2,0.9\n")  # fmt: skip
    write_csv(plots / "stage3/strategy.csv", "step,w_cls,w_seg,w_det\n0,1,1,1\n1,1.2,0.9,0.9\n")
    write_csv(plots / "reference_det/val.csv", "epoch,stage,det_map50\n2,2,0.5\n")
    write_csv(plots / "reference_cls/val.csv", "epoch,stage,cls_top1\n2,3,0.8\n")
    rows = [[0.7], [0.3, 0.6], [0.1, 0.2, 0.9]]
    evaluation = evaluated(rows, (0.7, 0.5, 0.8))
    first = write_figures(plots, tmp_path / "a", evaluation)
    second = write_figures(plots, tmp_path / "b", evaluation)
    names = ["forgetting.png", "forgetting_matrix.png", "loss.png", "loss_weights.png"]
    assert sorted(p.name for p in first.values()) == names
    for a, b in zip(first.values(), second.values(), strict=True):
        assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and a.read_bytes() == b.read_bytes()


def test_reference_trains_one_task_alone(tiny_mini: Path, tmp_path: Path) -> None:
    params = stage_config(tiny_params(tasks={"det": {"epochs": 1}}), "reference2")  # no strategy
    paths = StagePaths(
        mini=tiny_mini,
        previous=None,
        checkpoint=tmp_path / "reference_det.pt",
        snapshots=None,
        metrics=tmp_path / "reference_det.json",
        per_image=tmp_path / "reference_det_val.json",
        timing=tmp_path / "reference_det_time.json",
        plots=tmp_path / "reference_det",
    )
    metrics = train_stage(2, params, paths, single_task=True, tasks=["det"])
    assert metrics["task"] == "det" and metrics["strategy"] == "naive"
    assert set(metrics["final"]) == set(metrics["chance"]) == {"det"}
    assert json.loads(paths.metrics.read_text()) == metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "reference_det", "reference_det.json", "reference_det.pt", "reference_det_time.json",
        "reference_det_val.json",
    ]  # fmt: skip
    assert (paths.plots / "val.csv").read_text().splitlines()[1].startswith("1,2,")  # own epoch 1
    checkpoint = torch.load(paths.checkpoint, weights_only=True)
    assert checkpoint["tasks"] == ["det"] and checkpoint["strategy"] == "naive"
    assert read_timing(tmp_path, "reference_det")["train_seconds"] > 0
    # Another run's outputs in place (as DVC's run cache restores them): its timing is not this.
    paths.metrics.write_text(paths.metrics.read_text().replace('"naive"', '"other"'))
    assert read_timing(tmp_path, "reference_det") is None


def test_untimed_runs_are_left_out_of_the_totals_and_named_in_the_report() -> None:
    timed = {"train_seconds": 12.5, "peak_memory_mb": 700.0, "device": "cpu", "threads": 2}
    summary = efficiency_summary(
        {"stage1": None, "stage2": timed, "stage3": timed}, {"det": None, "cls": None},
        EFFICIENCY["inference"],
    )  # fmt: skip
    assert summary["training"]["untimed"] == ["stage1"]
    assert summary["training"]["total_seconds"] == 25.0
    assert set(summary["training"]["runs"]) == {"stage2", "stage3"}
    assert summary["references"] == {
        "runs": {}, "untimed": ["det", "cls"], "total_seconds": 0, "max_peak_memory_mb": None,
    }  # fmt: skip
    evaluation = evaluated([[0.68], [0.01, 0.68], [0.007, 0.001, 0.97]], (0.68, 0.6, 0.9))
    report = render_report(evaluation | {"parameters": 3_176_878}, summary, {})
    assert "25.0 s in all: stage2 12.5 s, stage3 12.5 s, stage1 restored from DVC's run" in report


def test_batchnorm_drift_splits_the_drop() -> None:
    """O_j is the score with task j's own statistics; the model keeps its own afterwards."""
    model = UnifiedModel({"seg": 3, "det": 2, "cls": 2}, "mobilenet_v3_small", False, 16, 2)
    final = {k: v.clone() for k, v in running_statistics(model.state_dict()).items()}
    first = next(k for k in final if k.endswith("running_mean"))
    shifted = {k: v + 0.25 if k.endswith("running_mean") else v for k, v in final.items()}

    def score(scored: torch.nn.Module, task: str) -> float:
        """A stand-in metric that reads the loaded statistics: 0.5 + the first mean's mean."""
        return 0.5 + scored.state_dict()[first].mean().item()

    base = score(model, "seg")
    evaluation = evaluated([[0.9], [0.6, 0.8], [0.5, 0.7, 0.9]], (0.9, 0.8, 0.9))
    evaluation["tasks"]["seg"]["final"] = round(base, 6)
    drift = batchnorm_drift(model, {"seg": shifted, "det": final}, score, evaluation)
    assert drift["seg"]["own_statistics"] == pytest.approx(base + 0.25, abs=1e-6)
    assert drift["seg"]["weight_drift"] == pytest.approx(0.9 - (base + 0.25), abs=1e-6)
    assert drift["seg"]["statistics_drift"] == pytest.approx(0.25, abs=1e-6)
    # the same statistics as the model's: nothing to recompute, no statistics drift
    assert drift["det"] == {"baseline": 0.8, "own_statistics": 0.7, "final": 0.7,
                            "weight_drift": 0.1, "statistics_drift": 0.0}  # fmt: skip
    after = running_statistics(model.state_dict())
    assert all(torch.equal(after[k], final[k]) for k in final)
    other = {"members.seg." + k: v for k, v in final.items()}
    assert batchnorm_drift(model, {"seg": other}, score, evaluation) == {"seg": None}
