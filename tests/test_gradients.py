"""Gradient analysis: the noise-scale estimator, cosines, the count sketch and the stage itself."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import merge, stage_config, tiny_params
from seqmtl.analysis.gradients import (
    GROUPS,
    CountSketch,
    GradientPaths,
    analyse_gradients,
    batch_statistics,
    cosine_matrix,
    flat_gradient,
    noise_scale,
    shared_parameter_groups,
    task_cosines,
)
from seqmtl.config import parse
from seqmtl.models.model import UnifiedModel
from seqmtl.strategies import total
from seqmtl.tasks.registry import Classification
from seqmtl.training.train import StagePaths, train_stage

SKETCH_ERROR = 0.05  # stated bound on |sketched - exact| cosine at dim 16384 (std <= 0.011)


def regression_batches(
    batches: int, batch: int, delta: torch.Tensor, sigma: float, seed: int
) -> Iterator[torch.Tensor]:
    """Batch gradients of the mean of ½(x·w - y)² at w = w* + delta, with x ~ N(0, I) and
    y = x·w* + N(0, sigma²) (w* = 0, so y is the noise)."""
    generator = torch.Generator().manual_seed(seed)
    w = delta.clone().requires_grad_()
    for _ in range(batches):
        x = torch.randn(batch, len(delta), generator=generator)
        y = sigma * torch.randn(batch, generator=generator)
        yield flat_gradient((0.5 * (x @ w - y) ** 2).mean(), [w])[0]


def test_noise_scale_matches_linear_regression() -> None:
    """Per-example gradient x(x·δ - ε): G = δ and, by Isserlis, Σ = (|δ|² + σ²) I + δδᵀ, so
    B_simple = (d (|δ|² + σ²) + |δ|²) / |δ|² (21 for d = 10, |δ| = 1, sigma = 1)."""
    d, sigma, b_small, per_big = 10, 1.0, 4, 8
    delta = torch.nn.functional.normalize(torch.arange(1.0, d + 1), dim=0)
    expected = d * (1 + sigma**2) + 1
    stats = batch_statistics(
        regression_batches(4000, b_small, delta, sigma, seed=0), per_big, CountSketch(d, 64, 0)
    )
    scale = noise_scale(stats.sq_small, stats.sq_big, b_small, b_small * per_big, 16000)
    assert scale.undefined is None
    assert scale.simple == pytest.approx(expected, rel=0.1)
    assert scale.grad_sq == pytest.approx(1.0, rel=0.05)
    assert scale.trace == pytest.approx(expected, rel=0.1)
    # E|g_B - g_D|² / |g_D|² = tr(Σ)(1/B - 1/N) / |g_D|² ≈ B_simple / B for N >> B
    assert stats.noise_ratio(stats.sq_small) == pytest.approx(expected / b_small, rel=0.1)


def test_noise_scale_is_undefined_where_the_estimate_means_nothing() -> None:
    """Pure noise (δ = 0): the |G|² estimate is within its noise of zero, and B_simple is null
    with that reason, not a large number; a real B_simple above the training set is null too."""
    d, b_small, per_big = 10, 4, 8
    noise_only = regression_batches(800, b_small, torch.zeros(d), 1.0, seed=1)
    stats = batch_statistics(noise_only, per_big, CountSketch(d, 64, 0))
    scale = noise_scale(stats.sq_small, stats.sq_big, b_small, b_small * per_big, 3200)
    assert scale.simple is None and "standard error" in scale.undefined
    delta = torch.nn.functional.normalize(torch.arange(1.0, d + 1), dim=0)
    stats = batch_statistics(
        regression_batches(800, b_small, delta, 1.0, seed=0), per_big, CountSketch(d, 64, 0)
    )
    assert noise_scale(stats.sq_small, stats.sq_big, b_small, b_small * per_big, 3200).simple
    small_set = noise_scale(stats.sq_small, stats.sq_big, b_small, b_small * per_big, 10)
    assert small_set.simple is None and "exceeds the 10 training images" in small_set.undefined
    one_group = noise_scale(stats.sq_small[:1], stats.sq_big[:1], b_small, b_small * per_big, 3200)
    assert one_group.simple is None and one_group.grad_sq_se is None


def test_identical_batches_have_cosine_one_and_no_noise() -> None:
    gradient = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    stats = batch_statistics([gradient] * 4, 2, CountSketch(1000, 256, 0))
    assert torch.allclose(cosine_matrix(stats.directions), torch.ones(4, 4), atol=1e-6)
    assert max(stats.sketch_errors) < 1e-6
    assert noise_scale(stats.sq_small, stats.sq_big, 2, 4, 8).trace == pytest.approx(0, abs=1e-3)
    assert stats.noise_ratio(stats.sq_small) == pytest.approx(0, abs=1e-5)


def test_batch_statistics_needs_whole_big_batches() -> None:
    with pytest.raises(ValueError, match="multiple of 3"):
        batch_statistics([torch.ones(5)] * 4, 3, CountSketch(5, 8, 0))


@pytest.fixture(scope="module")
def small_model() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel({"seg": 21, "det": 10, "cls": 10}, pretrained=False, channels=16).eval()


def test_task_cosine_of_a_loss_with_itself_and_its_negation(small_model: UnifiedModel) -> None:
    model = small_model
    shared = shared_parameter_groups(model)
    assert set(shared.groups) == set(GROUPS)
    assert shared.count() == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("head.out")
    )
    images = torch.rand(2, 3, 64, 64)
    targets = [{"label": torch.tensor(k)} for k in (1, 7)]
    loss = total(Classification(10).loss(model(images), targets, 64))
    g, reached = flat_gradient(loss, shared.params)
    loss = total(Classification(10).loss(model(images), targets, 64))
    g_neg, _ = flat_gradient(-loss, shared.params)
    assert reached.all()
    same = task_cosines({"seg": g, "det": g}, {"seg": reached, "det": reached}, shared)
    opposite = task_cosines({"seg": g, "det": g_neg}, {"seg": reached, "det": reached}, shared)
    for group in ("all", *GROUPS):
        assert same["seg-det"][group] == pytest.approx(1, abs=1e-6)
        assert opposite["seg-det"][group] == pytest.approx(-1, abs=1e-6)


def test_tasks_without_common_parameters_are_not_applicable(small_model: UnifiedModel) -> None:
    """One trunk per task: only the head is reached by both, so only it gets a cosine."""
    shared = shared_parameter_groups(small_model)
    head = torch.tensor([g == "head" for g in shared.groups])
    g = torch.randn(shared.count())
    cosines = task_cosines(
        {"seg": g, "cls": g}, {"seg": torch.ones_like(head), "cls": head}, shared
    )
    assert cosines["seg-cls"]["head"] == pytest.approx(1, abs=1e-6)
    assert cosines["seg-cls"]["all"] == pytest.approx(1, abs=1e-6)
    assert all(cosines["seg-cls"][group] is None for group in GROUPS if group != "head")
    disjoint = task_cosines({"seg": g, "cls": g}, {"seg": ~head, "cls": head}, shared)
    assert set(disjoint["seg-cls"].values()) == {None}


def test_count_sketch_preserves_cosines() -> None:
    """Heavy-tailed vectors (log-normal scales, like gradients) with cosines from -0.9 to 0.9."""
    n, dim = 200_000, 16384
    generator = torch.Generator().manual_seed(1)
    sketch = CountSketch(n, dim, seed=0)
    errors = []
    for target in torch.linspace(-0.9, 0.9, 13).tolist():
        scale = torch.exp(2 * torch.randn(n, generator=generator))
        x = torch.randn(n, generator=generator) * scale
        z = torch.randn(n, generator=generator) * scale
        z -= (z @ x) / (x @ x) * x
        y = target * x / x.norm() + math.sqrt(1 - target**2) * z / z.norm()
        exact = torch.nn.functional.cosine_similarity(x, y, dim=0)
        sketched = torch.nn.functional.cosine_similarity(sketch(x), sketch(y), dim=0)
        errors.append(abs(sketched - exact).item())
    assert max(errors) < SKETCH_ERROR


@pytest.fixture(scope="module")
def tiny_run(tiny_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Params and a folder holding the snapshots of stages 1 and 2 (one epoch each) trained on
    `tiny_mini`."""
    root = tmp_path_factory.mktemp("gradients")
    one_epoch = {"epochs": 1}
    params = tiny_params(tasks={"seg": one_epoch, "det": one_epoch})
    params["gradients"] = {
        "images": None,
        "batch_small": 2,
        "batch_big": 4,
        "projection_dim": 1024,
        "tsne_perplexity": 30,
    }
    for stage in (1, 2):
        train_stage(
            stage,
            parse(params),
            StagePaths(
                mini=tiny_mini,
                previous=root / f"stage{stage - 1}.pt" if stage > 1 else None,
                checkpoint=root / f"stage{stage}.pt",
                snapshots=root / f"stage{stage}_epochs",
                metrics=root / f"stage{stage}.json",
                per_image=root / f"stage{stage}_val.json",
                timing=root / f"stage{stage}_time.json",
                plots=root / f"plots{stage}",
            ),
        )
    (root / "plots2" / "strategy.csv").write_text("step,w_det,w_seg\n0,1.0,1.0\n1,1.2,0.8\n")
    return params, root


def run_stage(params: dict, root: Path, out: Path, mini: Path) -> dict:
    snapshots = [root / f"stage{s}_epochs" for s in (1, 2)]
    histories = [root / "plots2" / "strategy.csv"]
    paths = GradientPaths(mini, snapshots, histories, out / "g.json", out / "plots")
    return analyse_gradients(stage_config(params, "gradients"), paths)


def test_stage_writes_gradients_json(
    tiny_run: tuple[dict, Path], tiny_mini: Path, tmp_path: Path
) -> None:
    params, root = tiny_run
    result = run_stage(params, root, tmp_path / "a", tiny_mini)
    written = json.loads((tmp_path / "a" / "g.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written) == {"settings", "snapshots", "weight_history"}
    assert written["settings"]["images"] == {"seg": 8, "det": 8}
    assert list(written["snapshots"]) == ["epoch_001", "epoch_002"]
    last = written["snapshots"]["epoch_002"]
    assert (last["epoch"], last["stage"], last["strategy"]) == (2, 2, "naive")
    assert set(last["tasks"]) == {"seg", "det"}
    assert set(last["tasks"]["det"]) == {
        "full_grad_norm", "grad_sq", "grad_sq_se", "trace_cov", "noise_scale",
        "noise_scale_undefined", "noise_ratio_small", "noise_ratio_big", "batch_cosine",
    }  # fmt: skip
    assert set(last["task_cosine"]) == {"seg-det"}
    assert set(last["task_cosine"]["seg-det"]) == {"all", *GROUPS}
    assert written["snapshots"]["epoch_001"]["task_cosine"] == {}
    assert written["weight_history"]["plots2"] == {
        "steps": 2,
        "initial": {"det": 1.0, "seg": 1.0},
        "final": {"det": 1.2, "seg": 0.8},
    }
    pngs = {p.name for p in (tmp_path / "a" / "plots").iterdir()}
    assert pngs == {
        "batch_cosine_epoch_001.png", "batch_cosine_epoch_002.png", "noise_scale.png",
        "task_cosine.png", "task_cosine_matrices.png", "tsne.png",
    }  # fmt: skip
    # deterministic on CPU: the same inputs give byte-identical files
    run_stage(params, root, tmp_path / "b", tiny_mini)
    for name in ("g.json", "plots/noise_scale.png", "plots/tsne.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_stage_rejects_batch_sizes_that_do_not_nest(
    tiny_run: tuple[dict, Path], tiny_mini: Path, tmp_path: Path
) -> None:
    params, root = tiny_run
    bad = merge(params, {"gradients": {"batch_big": 3}})
    with pytest.raises(ValueError, match=r"^gradients\.batch_big must be a multiple of"):
        run_stage(bad, root, tmp_path, tiny_mini)
