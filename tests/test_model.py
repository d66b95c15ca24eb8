"""The one-head model: output shapes, one shared head branch, the parameter budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqmtl.config import Model
from seqmtl.models.backbones import BACKBONES
from seqmtl.models.model import Head, IndependentModel, UnifiedModel, architecture, fuse
from seqmtl.runtime import eval_mode
from seqmtl.tasks.registry import REGISTRY
from seqmtl.training.checkpoints import load_checkpoint

COUNTS = {"seg": 21, "det": 10, "cls": 10}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("head_layers", [2, 3])
def test_output_shapes(backbone: str, head_layers: int) -> None:
    model = UnifiedModel(COUNTS, backbone, pretrained=False, head_layers=head_layers).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 96, 128))
    assert out["seg"].shape == (2, 21, 96 // 8, 128 // 8)
    locations = sum((96 // s) * (128 // s) for s in (8, 16, 32))  # P3, P4, P5
    assert out["det"].shape == (2, locations, 4 + 1 + 10)
    assert out["cls"].shape == (2, 10)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_parameter_budget(backbone: str) -> None:
    model = UnifiedModel(COUNTS, backbone, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) < 8_000_000


def test_one_head_branch_emits_every_task() -> None:
    model = UnifiedModel(COUNTS, "efficientnet_lite0", pretrained=False, head_layers=3)
    convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and convs[-1] is model.head.out
    assert model.head.out.out_channels == 21 + (5 + 10) + 10
    with pytest.raises(ValueError, match=r"model\.head_layers must be 2 or 3"):
        UnifiedModel(COUNTS, "efficientnet_lite0", pretrained=False, head_layers=4)


def test_the_head_split_comes_from_the_task_registry() -> None:
    """Each task's channels are its registry entry's, in the registry's order, and its output
    is its entry's `output` of those channels (on every level where it reads them all)."""
    model = UnifiedModel(COUNTS, "mobilenet_v3_small", pretrained=False).eval()
    assert list(model.splits) == list(REGISTRY) == ["seg", "det", "cls"]
    assert model.splits == {t: REGISTRY[t].channels(n) for t, n in COUNTS.items()}
    assert [(s.start, s.stop) for s in model.slices.values()] == [(0, 21), (21, 36), (36, 46)]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        p3, *coarser = model.trunk(x)
        maps = model.head(fuse([p3, *coarser]))
        out = model(x)
    assert REGISTRY["det"].levels and not REGISTRY["seg"].levels
    torch.testing.assert_close(out["seg"], REGISTRY["seg"].output([maps[:, :21]]))


def test_detection_starts_at_the_prior() -> None:
    model = UnifiedModel(COUNTS, "efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        det = model(torch.rand(1, 3, 64, 64))["det"]
    # centerness and class probabilities near 0.01 everywhere, up to the weights' noise
    assert torch.sigmoid(det[..., 4:]).median() < 0.05


def test_classification_is_the_pooled_cls_channels() -> None:
    model = UnifiedModel(COUNTS, "mobilenet_v3_small", pretrained=False).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps = model.head(fuse(model.trunk(x)))
        out = model(x)
    torch.testing.assert_close(out["cls"], maps[:, -10:].mean((2, 3)))


def test_zero_task_output_starts_that_task_at_its_bias() -> None:
    model = UnifiedModel(COUNTS, "mobilenet_v3_small", pretrained=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.zero_task_output("det")
        after = model(x)
    bias = model.head.out.bias[21 : 21 + 15]
    torch.testing.assert_close(after["det"], bias.expand_as(after["det"]))
    for task in ("seg", "cls"):
        assert torch.equal(after[task], before[task]), task


def test_one_set_of_head_weights_serves_every_level() -> None:
    """Detection on P4 and P5 is the same Head's detection channels on those levels."""
    model = UnifiedModel(COUNTS, "mobilenet_v3_small", pretrained=False).eval()
    assert [type(m) for m in model.modules()].count(Head) == 1
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        p3, p4, p5 = model.trunk(x)
        out = model(x)
        coarser = [model.head(level)[:, 21 : 21 + 15].flatten(2) for level in (p4, p5)]
    assert p3.shape[-1] == 8 and p4.shape[-1] == 4 and p5.shape[-1] == 2
    torch.testing.assert_close(out["det"][0, 64:], torch.cat(coarser, 2)[0].T)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_even_on_error(training: bool) -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Dropout()).train(training)
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert all(m.training == training for m in model.modules())


@pytest.mark.parametrize("members", [None, ["seg", "det"]])
def test_a_checkpoint_rebuilds_its_model_from_its_architecture_alone(
    tmp_path: Path, members: list[str] | None
) -> None:
    config = Model("mobilenet_v3_small", False, 32, 2, "frozen")

    def unified() -> UnifiedModel:
        return UnifiedModel(COUNTS, "mobilenet_v3_small", False, 32, 2, "frozen")

    model = unified() if members is None else IndependentModel({t: unified() for t in members})
    path = tmp_path / "stage.pt"
    assert "frozen" not in architecture(model, config)  # nothing frozen, nothing recorded
    if members:
        model.freeze(["seg"])
    torch.save({"model": model.state_dict(), "architecture": architecture(model, config)}, path)
    loaded, _ = load_checkpoint(path)
    assert type(loaded) is type(model)
    frozen = {n for n, p in loaded.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert bool(frozen) == bool(members)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = model.eval()(x), loaded.eval()(x)
    assert all(torch.equal(expected[t], got[t]) for t in expected)
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(ValueError, match="no architecture record"):
        load_checkpoint(path)
