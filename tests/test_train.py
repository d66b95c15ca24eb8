"""The stage routine on a tiny synthetic set: outputs, determinism, bad parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import seqmtl.tasks.registry
import seqmtl.training.train
from conftest import stage_config, tiny_params
from seqmtl.config import Config, parse
from seqmtl.data.datasets import TASKS, class_names
from seqmtl.strategies import build_strategy
from seqmtl.training.checkpoints import model_factory
from seqmtl.training.train import StagePaths, build_optimizer, train_stage


def params(*overrides: str, **change: object) -> Config:
    """The tiny params (`tiny_params`), parsed."""
    return parse(tiny_params(*overrides, **change))


def paths(root: Path, mini: Path, stage: int) -> StagePaths:
    ckpt = root / "checkpoints"
    return StagePaths(
        mini=mini,
        previous=ckpt / f"stage{stage - 1}.pt" if stage > 1 else None,
        checkpoint=ckpt / f"stage{stage}.pt",
        snapshots=ckpt / f"stage{stage}_epochs",
        metrics=root / "metrics" / f"stage{stage}.json",
        per_image=root / "val" / f"stage{stage}.json",
        timing=root / "metrics" / f"stage{stage}_time.json",
        plots=root / "plots" / f"stage{stage}",
    )


@pytest.fixture(scope="module")
def three_stages(tiny_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    for stage in (1, 2, 3):  # each stage sees only what dvc.yaml declares for it
        train_stage(
            stage,
            stage_config(tiny_params(), f"stage{stage}"),
            paths(root, tiny_mini, stage),
            tasks=list(TASKS[:stage]),
        )
    return root


def test_every_task_seen_is_evaluated(three_stages: Path, tiny_mini: Path) -> None:
    for stage, seen in ((1, {"seg"}), (2, {"seg", "det"}), (3, {"seg", "det", "cls"})):
        metrics = json.loads((three_stages / "metrics" / f"stage{stage}.json").read_text())
        assert set(metrics["final"]) == seen == set(metrics["chance"])
        assert metrics["task"] == ["seg", "det", "cls"][stage - 1]
    final = json.loads((three_stages / "metrics" / "stage3.json").read_text())["final"]
    summary = {"map", "map50", "precision", "recall", "f1", "map_small", "map_medium", "map_large"}
    per_class = {f"ap50_{n.replace(' ', '_')}" for n in class_names(tiny_mini)["det"]}
    assert set(final["det"]) == summary | per_class
    assert 0.0 <= final["seg"]["miou"] <= 1.0 and 0.0 <= final["cls"]["top1"] <= 1.0


def test_plots_and_snapshots(three_stages: Path) -> None:
    train = (three_stages / "plots" / "stage2" / "train.csv").read_text().splitlines()
    assert train[0].startswith("epoch,stage,det/det_box") and len(train) == 3
    assert train[0].endswith(",grad_norm")
    val = (three_stages / "plots" / "stage3" / "val.csv").read_text().splitlines()
    assert val[0] == "epoch,stage,seg_miou,det_map50,cls_top1"
    assert [row.split(",")[0] for row in val[1:]] == ["5", "6"]  # global epochs
    snapshots = sorted(p.name for p in (three_stages / "checkpoints" / "stage3_epochs").iterdir())
    assert snapshots == ["epoch_005.pt", "epoch_006.pt"]
    timing = json.loads((three_stages / "metrics" / "stage1_time.json").read_text())
    assert timing["device"] == "cpu" and timing["images_per_second"] > 0


def test_same_params_give_identical_metrics(
    three_stages: Path, tiny_mini: Path, tmp_path: Path
) -> None:
    train_stage(1, params(), paths(tmp_path, tiny_mini, 1))
    for name in ("metrics/stage1.json", "plots/stage1/val.csv", "plots/stage1/train.csv"):
        assert (tmp_path / name).read_bytes() == (three_stages / name).read_bytes(), name


def test_a_task_starting_on_a_trained_trunk_starts_at_zero_output_weights(
    three_stages: Path, tiny_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = {}

    def spy(model: torch.nn.Module, *args: object) -> torch.optim.Optimizer:
        start["out"] = model.head.out.weight.detach().clone()
        return build_optimizer(model, *args)

    monkeypatch.setattr(seqmtl.training.train, "build_optimizer", spy)
    (tmp_path / "checkpoints").mkdir()
    stage1 = three_stages / "checkpoints" / "stage1.pt"
    (tmp_path / "checkpoints" / "stage1.pt").write_bytes(stage1.read_bytes())
    train_stage(2, params(), paths(tmp_path, tiny_mini, 2))
    trained = torch.load(stage1, weights_only=True)["model"]["head.out.weight"]
    seg = class_names(tiny_mini)["seg"]
    det = slice(len(seg), len(seg) + 5 + len(class_names(tiny_mini)["det"]))
    assert start["out"][det].abs().sum() == 0
    assert torch.equal(start["out"][: det.start], trained[: det.start])
    assert torch.equal(start["out"][det.stop :], trained[det.stop :])


def test_stage1_reads_no_strategy(tiny_mini: Path, tmp_path: Path) -> None:
    config = stage_config(tiny_params(strategy={"name": "no-such-thing"}), "stage1")
    with pytest.raises(AttributeError, match="strategy is read by stage stage1, which does not"):
        _ = config.strategy
    metrics = train_stage(1, config, paths(tmp_path, tiny_mini, 1), tasks=["seg"])
    assert metrics["strategy"] == "naive"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": {"seg": {"epochs": -1}}}, r"^tasks\.seg\.epochs must be > 0, got -1$"),
        (
            {"tasks": {"seg": {"epochs": "six"}}},
            r"^tasks\.seg\.epochs must be an integer, got 'six'$",
        ),
        ({"tasks": {"seg": {"lr": 0}}}, r"^tasks\.seg\.lr must be > 0, got 0$"),
        (
            {"tasks": {"seg": {"image_size": 70}}},
            r"^tasks\.seg\.image_size must be a multiple of 32",
        ),
        ({"train": {"precision": "fp16"}}, r"^train\.precision must be one of fp32, bf16"),
        ({"train": {"backbone_lr": -1}}, r"^train\.backbone_lr must be >= 0, got -1$"),
        ({"model": {"batchnorm": "sync"}}, r"^model\.batchnorm must be one of frozen, train"),
        ({"train": {"clip_grad_norm": 0}}, r"^train\.clip_grad_norm must be > 0, got 0$"),
        ({"train": {"seg_loss_stride": 0}}, r"^train\.seg_loss_stride must be > 0"),
        ({"train": {"warmpu": 0.1}}, r"^train\.warmpu: unknown param of train$"),
        ({"sead": 1}, r"^sead: unknown param of params\.yaml$"),
    ],
)
def test_bad_params_are_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params(**change)


def test_unknown_strategy_is_named(three_stages: Path, tiny_mini: Path, tmp_path: Path) -> None:
    stage2 = paths(tmp_path, tiny_mini, 2)
    stage2 = StagePaths(**{**stage2.__dict__, "previous": three_stages / "checkpoints/stage1.pt"})
    with pytest.raises(ValueError, match=r"unknown rule 'magic'; known: .*pcgrad"):
        train_stage(2, params(strategy={"rule": {"name": "magic"}}), stage2)
    assert not any(tmp_path.iterdir())


def test_bf16_autocast_trains(tiny_mini: Path, tmp_path: Path) -> None:
    metrics = train_stage(1, params(train={"precision": "bf16"}), paths(tmp_path, tiny_mini, 1))
    assert 0.0 <= metrics["final"]["seg"]["miou"] <= 1.0
    assert metrics["loss"]["seg/ce"] > 0


def bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize("policy", ["frozen", "train"])
def test_batchnorm_policy(tiny_mini: Path, policy: str) -> None:
    """`frozen` keeps the backbone's running statistics bit-identical through a training step
    (and normalises with them), while its BatchNorm affine weights still learn; `train` moves
    the statistics."""
    config = params(model={"pretrained": False, "batchnorm": policy})
    model = model_factory(config.model, tiny_mini, 0)().train()
    before, weights = bn_buffers(model), model.trunk.backbone.net._bn0.weight.clone()
    optimizer = build_optimizer(model, build_strategy(config.strategy), 0.01, config.train)
    images = torch.rand(2, 3, 64, 64)
    model(images)["cls"].logsumexp(1).sum().backward()
    optimizer.step()
    after = bn_buffers(model)
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    if policy == "frozen":
        assert not moved
        assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    else:
        assert len(moved) == len(before)
    assert not torch.equal(weights, model.trunk.backbone.net._bn0.weight)


def test_backbone_gets_its_own_learning_rate(tiny_mini: Path) -> None:
    config = params(train={"backbone_lr": 0.25})
    model = model_factory(config.model, tiny_mini, 0)()
    optimizer = build_optimizer(model, build_strategy(config.strategy), 0.004, config.train)
    backbone, rest, strategy = optimizer.param_groups
    assert backbone["lr"] == pytest.approx(0.001) and rest["lr"] == strategy["lr"] == 0.004
    ids = {id(p) for p in model.trunk.backbone.parameters()}
    assert {id(p) for p in backbone["params"]} == ids
    assert len(backbone["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert not ids & {id(p) for p in rest["params"]}


def test_every_task_is_trained_and_evaluated_at_its_own_size(
    three_stages: Path, tiny_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[str, str, int]] = []
    original = seqmtl.training.train.build_dataset

    def spy(mini: Path, task: str, split: str, size: int, train: bool) -> object:
        built.append((task, split, size))
        return original(mini, task, split, size, train)

    monkeypatch.setattr(seqmtl.training.train, "build_dataset", spy)
    stage2 = paths(tmp_path, tiny_mini, 2)
    stage2 = StagePaths(**{**stage2.__dict__, "previous": three_stages / "checkpoints/stage1.pt"})
    det = {"image_size": 96, "epochs": 1}
    train_stage(2, params("strategy=replay", tasks={"det": det}), stage2)
    assert ("seg", "val", 64) in built and ("seg", "train", 64) in built  # replayed at 64
    assert ("det", "val", 96) in built and ("det", "train", 96) in built
    assert {size for task, _, size in built if task == "seg"} == {64}


def test_a_non_finite_loss_stops_the_stage_naming_it_and_writes_nothing(
    tiny_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diverged(self: object, outputs: dict, targets: list, size: int) -> dict:
        return {"ce": outputs["seg"].sum() * float("nan")}

    monkeypatch.setattr(seqmtl.tasks.registry.Segmentation, "loss", diverged)
    stage = paths(tmp_path, tiny_mini, 1)
    with pytest.raises(ValueError, match=r"^stage1 \(seg\), epoch 1: loss seg/ce is nan$"):
        train_stage(1, params(), stage)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
