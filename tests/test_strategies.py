"""Strategies on small known problems, and every registered strategy through stages 2 and 3."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import REPO, merge
from seqmtl.config import Config, ReplayBuffer, compose, parse, presets
from seqmtl.data.datasets import TaskDataset, build_dataset, class_names, collate
from seqmtl.models.model import UnifiedModel, build_model, shared_parameters
from seqmtl.strategies import StageContext, Strategy, build_strategy, total
from seqmtl.strategies.rules.pcgrad import project_conflicting
from seqmtl.strategies.terms.ewc import empirical_fisher
from seqmtl.tasks.registry import Targets, build_tasks
from seqmtl.training.checkpoints import load_checkpoint
from seqmtl.training.train import StagePaths, build_optimizer, train_stage

SMALL = {
    "device": "cpu",
    "model": {"backbone": "mobilenet_v3_small", "pretrained": False, "channels": 16,
              "head_layers": 2},
    "tasks": {
        task: {"epochs": 1, "batch_size": 4, "image_size": 64} for task in ("seg", "det", "cls")
    },
    "train": {"eval_every": 1, "checkpoint_every": 1},
    "replay_buffer": {"per_task": 4, "batch_size": 2},
}  # fmt: skip


PRETRAINED = {"model": {"backbone": "efficientnet_lite0", "pretrained": True}}
ONE_SAMPLE = {"per_task": 1, "batch_size": 1, "weight": 1.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and two threads on two shared cores stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_params(*overrides: str, **change: Any) -> Config:
    """The default composition with `overrides` (as `dvc exp run -S`), the small model and
    one-epoch stages of SMALL, then `change`."""
    return parse(merge(merge(compose(list(overrides), REPO / "conf"), SMALL), change))


def make_strategy(*overrides: str, replay: dict = ONE_SAMPLE) -> Strategy:
    """The strategy of `overrides` (as `dvc exp run -S`: "strategy=gradnorm",
    "strategy.rule.lr=0.05", …) with a replay buffer of `replay`'s settings."""
    section = parse(compose(list(overrides), REPO / "conf")).strategy
    return build_strategy(section, ReplayBuffer(**replay))


def small_model(mini: Path) -> UnifiedModel:
    torch.manual_seed(0)
    counts = {task: len(names) for task, names in class_names(mini).items()}
    return UnifiedModel(counts, "mobilenet_v3_small", False, 16, 2)


def context(model: nn.Module, mini: Path, task: str, old: list[str]) -> StageContext:
    """A stage context on the tiny datasets at 64 px, batch 4, on the cpu."""
    sets: dict[str, TaskDataset] = {}

    def train_data(t: str) -> TaskDataset:
        if t not in sets:
            sets[t] = build_dataset(mini, t, "train", 64, train=True)
        return sets[t]

    tasks = build_tasks(model.num_classes, 0.5)
    return StageContext(model, tasks, task, old, torch.device("cpu"), 0, 4, train_data)


# --- GradNorm ---


class TwoHeads(nn.Module):
    """A shared linear layer (GradNorm's W) and one linear regression head per loss."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 16)
        self.heads = nn.ModuleList([nn.Linear(16, 1), nn.Linear(16, 1)])

    def shared_layer(self) -> nn.Module:
        return self.shared

    def forward(self, x: Tensor) -> list[Tensor]:
        features = torch.relu(self.shared(x))
        return [head(features) for head in self.heads]


def no_data(task: str) -> TaskDataset:
    raise AssertionError(f"the toy problem has no {task} dataset")


def train_two_losses(name: str, steps: int = 200) -> tuple[StageContext, Tensor]:
    """Two equally hard regressions, the second loss scaled x100, trained by strategy `name`;
    the context (with its log) and the final L_i / L_i(0)."""
    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(256, 8)
    ys = [x @ torch.randn(8, 1), x @ torch.randn(8, 1)]
    tuned = ["strategy.rule.lr=0.05", "strategy.rule.initial_steps=5"]
    rule = make_strategy(f"strategy={name}", *(tuned if name == "gradnorm" else [])).rule
    ctx = StageContext(model, {}, "det", ["seg"], torch.device("cpu"), 0, 256, no_data)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def losses() -> dict[str, dict[str, Tensor]]:
        out = model(x)
        return {
            "det": {"mse": F.mse_loss(out[0], ys[0])},
            "seg": {"mse": 100 * F.mse_loss(out[1], ys[1])},
        }

    def values(parts: dict[str, dict[str, Tensor]]) -> Tensor:
        return torch.stack([total(p) for p in parts.values()]).detach()

    initial = values(losses())
    for _ in range(steps):
        optimizer.zero_grad()
        rule.backward(ctx, losses(), {"det": 1.0, "seg": 1.0})
        optimizer.step()
        rule.step()
        ctx.step += 1
    return ctx, values(losses()) / initial


def test_gradnorm_moves_weights_toward_equal_training_rates() -> None:
    ctx, rates = train_two_losses("gradnorm")
    _, plain_rates = train_two_losses("naive")
    assert len(ctx.history) == 200
    assert ctx.history[0]["w_det"] == ctx.history[0]["w_seg"] == 1.0
    for row in ctx.history:
        assert row["w_det"] + row["w_seg"] == pytest.approx(2.0, abs=1e-5)
        assert row["w_det"] >= 0 and row["w_seg"] >= 0
    # The x100 loss gives up weight (toward 1 : 100) ...
    last = ctx.history[-1]
    assert last["w_seg"] < 0.05 * last["w_det"]
    # ... and the relative training rates L_i / L_i(0) come far closer than with the plain sum.
    assert rates[0] / rates[1] < (plain_rates[0] / plain_rates[1]) / 10


def test_gradnorm_initial_losses_average_the_first_steps() -> None:
    rule = make_strategy("strategy=gradnorm", "strategy.rule.initial_steps=3").rule
    model = TwoHeads()
    ctx = StageContext(model, {}, "det", ["seg"], torch.device("cpu"), 0, 8, no_data)
    for value in (2.0, 4.0, 9.0, 100.0):
        out = model(torch.randn(4, 8))
        losses = {
            t: {"l": o.sum() * 0 + value * k}
            for k, (t, o) in enumerate(zip(("det", "seg"), out, strict=True), 1)
        }
        rule.backward(ctx, losses, {})
        rule.step()
    assert rule.initial.tolist() == pytest.approx([5.0, 10.0])


def test_gradnorm_weights_move_only_with_the_model_update() -> None:
    """A backward pass whose step the loop does not take (a non-finite loss, …) leaves the
    weights where they were; `step` moves them."""
    rule = make_strategy("strategy=gradnorm", "strategy.rule.lr=0.05").rule
    model = TwoHeads()
    ctx = StageContext(model, {}, "det", ["seg"], torch.device("cpu"), 0, 8, no_data)
    out = model(torch.randn(4, 8))
    losses = {"det": {"l": out[0].square().mean()}, "seg": {"l": 9 * out[1].abs().mean()}}
    rule.backward(ctx, losses, {})
    before = rule.weights.detach().clone()
    assert rule.weights.grad is not None and rule.weights.grad.abs().sum() > 0
    torch.testing.assert_close(rule.weights.detach(), before, rtol=0, atol=0)
    rule.step()
    assert not torch.equal(rule.weights.detach(), before)
    assert rule.weights.sum().item() == pytest.approx(2.0)


# --- parts that compose ---


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["strategy=replay"], {"det", "seg"}),
        (["strategy=ewc", "strategy/terms=[replay,ewc]"], {"det", "seg", "ewc"}),
        (["strategy=lwf", "strategy/terms=[replay,lwf]"], {"det", "seg", "lwf"}),
        (["strategy=derpp", "strategy/terms=[derpp]"], {"det", "derpp"}),
    ],
)
def test_terms_add_their_entries_at_their_weights(
    tiny_mini: Path, overrides: list[str], keys: set[str]
) -> None:
    """Each term adds its entries to the new task's loss; replay's old-task losses take
    replay_buffer.weight, derpp's its alpha, the others their own factor 1 (λ inside); derpp
    alone (DER) draws on the buffer without replaying labels."""
    replay = {"per_task": 3, "batch_size": 1, "weight": 0.5}
    strategy = make_strategy(*overrides, replay=replay)
    ctx = context(small_model(tiny_mini), tiny_mini, "det", ["seg"])
    strategy.before_stage(ctx)
    assert len(ctx.buffer.items["seg"][1]) == 3
    losses = strategy.losses(ctx, *collate([ctx.train_data("det")[i] for i in range(4)]))
    assert set(losses) == keys
    expected = {"det": 1.0, "seg": 0.5, "ewc": 1.0, "lwf": 1.0, "derpp": 0.1}
    assert strategy.weights == {k: expected[k] for k in losses}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=ewc", "+strategy.terms.ewc.lamda=1.0"],
         r"^strategy\.terms\.ewc\.lamda: not a param of ewc"),
        (["+strategy.terms.replay.weight=2"],
         r"^strategy\.terms\.replay\.weight: not a param of replay"),
        (["+strategy.terms.ewcc={}"],
         r"^strategy\.terms\.ewcc: unknown term 'ewcc'; known: cumulative, derpp"),
        (["strategy.rule.name=gradnom"],
         r"^strategy\.rule\.name: unknown rule 'gradnom'; known: gradnorm"),
        (["strategy=gradnorm", "strategy.rule.alpha=-1"],
         r"^strategy\.rule\.alpha must be a number ≥ 0"),
        (["strategy=cumulative", "strategy/terms=[replay,cumulative]"],
         r"^strategy\.terms: replay and cumulative both add the old tasks' losses"),
        (["strategy=independent", "+strategy/terms=[replay]"],
         r"^strategy\.terms: trunk per_task"),
        (["+strategy.freeze.neck=1"],
         r"^strategy\.freeze\.neck must be the stage it is frozen from"),
        (["+strategy.freeze.trunk=2"], r"^strategy\.freeze\.trunk: not a part"),
    ],
)  # fmt: skip
def test_bad_parts_are_rejected_by_name(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_strategy(*overrides)


@pytest.mark.parametrize(("key", "value"), [("per_task", 0), ("batch_size", 2.5), ("weight", -1)])
def test_bad_replay_buffer_params_are_rejected_by_name(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^replay_buffer\.{key} must be"):
        small_params(replay_buffer={key: value})


# --- uncertainty ---


def test_uncertainty_learns_each_loss_log_variance(tiny_mini: Path) -> None:
    """The log-variances take their own lr in the stage's optimiser (not the model's 1e-3)."""
    strategy = make_strategy("strategy=uncertainty", replay=ONE_SAMPLE | {"per_task": 2})
    ctx = context(small_model(tiny_mini), tiny_mini, "det", ["seg"])
    strategy.before_stage(ctx)
    assert [s.item() for s in strategy.parameters()] == [0.0, 0.0]
    optimizer = build_optimizer(ctx.model, strategy, 1e-3, small_params().train)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3, 0.05]
    fixed = {"det": {"l": torch.tensor(4.0)}, "seg": {"l": torch.tensor(0.25)}}
    for _ in range(400):  # exp(-s)·L + s is smallest at s = log L
        optimizer.zero_grad()
        strategy.rule.backward(ctx, fixed, {})
        optimizer.step()
    s = strategy.rule.log_variances
    assert s["det"].item() == pytest.approx(math.log(4.0), abs=0.02)
    assert s["seg"].item() == pytest.approx(math.log(0.25), abs=0.02)
    assert ctx.history[-1]["w_det"] == pytest.approx(0.25, abs=0.01)


# --- PCGrad ---


def test_pcgrad_removes_conflicts_and_keeps_agreeing_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    conflicting = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.5]])
    assert conflicting[0] @ conflicting[1] < 0
    combined = project_conflicting(conflicting, generator)
    for g in conflicting:
        assert combined @ g >= -1e-6
    # Two-gradient PCGrad by hand: each loses its component along the other.
    g1, g2 = conflicting
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
    torch.testing.assert_close(combined, expected)

    agreeing = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, -0.2], [0.2, 0.1, 1.0]])
    assert ((agreeing @ agreeing.T) >= 0).all()
    torch.testing.assert_close(project_conflicting(agreeing, generator), agreeing.sum(0))


def test_pcgrad_three_conflicting_gradients_in_seeded_order() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
    generator = torch.Generator().manual_seed(5)
    orders = [torch.randperm(3, generator=generator).tolist() for _ in range(3)]
    expected = torch.zeros(2)
    for i, order in enumerate(orders):  # the projections by hand, in the generator's orders
        g = grads[i].clone()
        for j in order:
            if j != i and g @ grads[j] < 0:
                g -= (g @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        expected += g
    combined = project_conflicting(grads, torch.Generator().manual_seed(5))
    torch.testing.assert_close(combined, expected)
    # the order matters with three conflicting gradients: other seeds give other results
    results = {tuple(project_conflicting(grads, torch.Generator().manual_seed(s)).tolist())
               for s in range(20)}  # fmt: skip
    assert len(results) > 1


# --- EWC ---


def test_ewc_penalty_is_zero_at_anchor_and_its_gradient_is_2_lambda_f_delta(
    tiny_mini: Path,
) -> None:
    model = small_model(tiny_mini)
    strategy = make_strategy("strategy=ewc", "strategy.terms.ewc.lambda=3.0")
    strategy.before_stage(context(model, tiny_mini, "det", ["seg"]))
    ewc = strategy.terms[0]
    params = shared_parameters(model)
    assert set(ewc.fisher) == set(params)
    assert all((f >= 0).all() for f in ewc.fisher.values())
    assert sum(f.sum() for f in ewc.fisher.values()) > 0

    assert ewc.penalty(model).item() == 0.0
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.01)
    model.zero_grad()
    ewc.penalty(model).backward()
    for name, p in params.items():
        expected = 2 * 3.0 * ewc.fisher[name] * (p.detach() - ewc.anchor[name])
        torch.testing.assert_close(p.grad, expected)


def test_l2sp_pulls_the_backbone_to_its_pretrained_weights(tiny_mini: Path) -> None:
    """Zero at the pretrained weights, gradient alpha·(w - w⁰) on the backbone and none elsewhere,
    and nothing to anchor once the backbone is frozen."""
    counts = {task: len(names) for task, names in class_names(tiny_mini).items()}
    model = UnifiedModel(counts, "efficientnet_lite0", True, 16, 2)
    pretrained = {n: p.detach().clone() for n, p in model.trunk.backbone.named_parameters()}
    strategy = make_strategy("strategy=l2sp", "strategy.terms.l2sp.alpha=2.0")
    ctx = context(model, tiny_mini, "det", ["seg"])
    strategy.before_stage(ctx)
    l2sp = strategy.terms[0]

    def penalty() -> Tensor:
        return l2sp.losses(ctx, torch.zeros(0), {})["l2sp"]["penalty"]

    assert penalty().item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.zero_grad()
    penalty().backward()
    for name, p in model.trunk.backbone.named_parameters():
        torch.testing.assert_close(p.grad, 2.0 * (p.detach() - pretrained[name]))
    assert all(p.grad is None for p in model.trunk.neck.parameters())
    model.trunk.backbone.requires_grad_(False)
    strategy.before_stage(ctx)
    assert l2sp.anchor == {} and penalty().item() == 0.0


def test_ewc_accumulates_fishers_online(tiny_mini: Path) -> None:
    model = small_model(tiny_mini)
    strategy = make_strategy("strategy=ewc", "strategy.terms.ewc.gamma=0.5")
    ewc = strategy.terms[0]
    ctx = context(model, tiny_mini, "det", ["seg"])
    strategy.before_stage(ctx)
    seg = {n: f.clone() for n, f in ewc.fisher.items()}
    torch.manual_seed(0)
    strategy.after_stage(ctx)
    torch.manual_seed(0)  # the same augmentations again
    det = empirical_fisher(ctx, "det")
    assert ewc.tasks == ["seg", "det"]
    for name, f in ewc.fisher.items():
        torch.testing.assert_close(f, 0.5 * seg[name] + det[name])
    assert any(d.sum() > 0 for d in det.values())


# --- LwF ---


def test_lwf_teacher_never_changes_during_the_stage(tiny_mini: Path) -> None:
    model = small_model(tiny_mini)
    ctx = context(model, tiny_mini, "cls", ["seg", "det"])
    strategy = make_strategy("strategy=lwf")
    strategy.before_stage(ctx)
    lwf = strategy.terms[0]
    teacher = {k: v.clone() for k, v in lwf.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loader = torch.utils.data.DataLoader(ctx.train_data("cls"), batch_size=4, collate_fn=collate)
    for images, targets in loader:
        optimizer.zero_grad()
        losses = strategy.losses(ctx, images, targets)
        assert set(losses["lwf"]) == {"seg", "det_cls", "det_ctr", "det_box"}
        strategy.backward(ctx, losses)
        optimizer.step()
    assert not lwf.teacher.training
    assert all(not p.requires_grad for p in lwf.teacher.parameters())
    for key, value in lwf.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher[key], rtol=0, atol=0)
    assert any(not torch.equal(v, student[k]) for k, v in model.state_dict().items())


# --- DER++ ---


def test_derpp_recalls_the_outputs_its_old_tasks_ended_with(tiny_mini: Path) -> None:
    """The recorded views are the datasets' own samples (stored as uint8 without loss), the
    recorded outputs are the stage-start model's, so their error starts at zero and grows as the
    model learns the new task; the records are carried to the next stage, never recomputed."""
    params = small_params("strategy=derpp")
    model = small_model(tiny_mini)
    ctx = context(model, tiny_mini, "det", ["seg"])
    strategy = build_strategy(params.strategy, params.replay_buffer)
    strategy.before_stage(ctx)
    derpp = strategy.terms[1]
    images, outputs = derpp.records["seg"]
    dataset, indices = ctx.buffer.items["seg"]
    assert images.dtype == torch.uint8 and len(images) == len(indices) == 4
    for image, i in zip(images, indices, strict=True):
        torch.testing.assert_close(image.float() / 255, dataset[int(i)][0], rtol=0, atol=1e-7)
    model.train()
    start = strategy.losses(ctx, *collate([ctx.train_data("det")[i] for i in range(4)]))
    assert set(start) == {"det", "seg", "derpp"} and start["derpp"]["seg"].item() < 1e-10
    recorded = outputs.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(ctx.train_data("det"), batch_size=4, collate_fn=collate)
    for batch in loader:
        optimizer.zero_grad()
        losses = strategy.losses(ctx, *batch)
        strategy.backward(ctx, losses)
        optimizer.step()
    assert losses["derpp"]["seg"].item() > 1e-4
    torch.testing.assert_close(derpp.records["seg"][1], recorded, rtol=0, atol=0)

    carried = build_strategy(params.strategy, params.replay_buffer)
    carried.load_state_dict(strategy.state_dict())
    carried.before_stage(context(model, tiny_mini, "cls", ["seg", "det"]))
    assert carried.terms[1].records["seg"][1] is outputs
    assert carried.terms[1].records["det"][1].shape[0] == 4


# --- cumulative ---


class IndexRecorder(StageContext):
    """A context whose task losses only record which training samples they were given."""

    seen: dict[str, set[int]]

    def loss(self, task: str, images: Tensor, targets: Targets) -> dict[str, Tensor]:
        self.seen.setdefault(task, set()).update(t["index"] for t in targets)
        return {"zero": torch.zeros(())}


def test_cumulative_sees_every_task_samples(tiny_mini: Path) -> None:
    model = small_model(tiny_mini)
    base = context(model, tiny_mini, "cls", ["seg", "det"])
    ctx = IndexRecorder(**{f: getattr(base, f) for f in ("model", "tasks", "task", "old_tasks",
                                                         "device", "seed", "batch_size",
                                                         "train_data")})  # fmt: skip
    ctx.seen = {}
    strategy = make_strategy("strategy=cumulative")
    strategy.before_stage(ctx)
    loader = torch.utils.data.DataLoader(ctx.train_data("cls"), batch_size=4, collate_fn=collate)
    for images, _ in loader:
        assert set(strategy.terms[0].losses(ctx, images, {})) == {"seg", "det"}
    for task in ("seg", "det"):
        assert ctx.seen[task] == set(range(len(ctx.train_data(task)))), task


# --- independent ---


def test_independent_shares_no_parameter_between_tasks(tiny_mini: Path) -> None:
    strategy = make_strategy("strategy=independent")
    single = small_model(tiny_mini)
    stage1 = {"model": single.state_dict(), "tasks": ["seg"], "strategy": "naive"}
    model = strategy.load_model(lambda: small_model(tiny_mini), stage1, ["seg", "det"])
    torch.testing.assert_close(model.members["seg"].state_dict(), single.state_dict())
    stage2 = {"model": model.state_dict(), "tasks": ["seg", "det"], "strategy": "independent"}
    model = strategy.load_model(lambda: small_model(tiny_mini), stage2, ["seg", "det", "cls"])
    det = {k.removeprefix("members.det."): v for k, v in stage2["model"].items()
           if k.startswith("members.det.")}  # fmt: skip
    torch.testing.assert_close(model.members["det"].state_dict(), det)

    storages = {t: {p.data_ptr() for p in m.parameters()} for t, m in model.members.items()}
    assert not storages["seg"] & storages["det"]
    assert not storages["seg"] & storages["cls"]
    assert not storages["det"] & storages["cls"]
    count = sum(p.numel() for p in model.parameters())
    assert count == 3 * sum(p.numel() for p in single.parameters())
    assert model.num_classes == single.num_classes

    strategy.before_stage(context(model, tiny_mini, "cls", ["seg", "det"]))
    model.train()
    assert not model.members["seg"].training and not model.members["det"].training
    assert model.members["cls"].training
    outputs = model(torch.rand(2, 3, 64, 64), tasks=("cls",))
    assert set(outputs) == {"cls"}
    outputs["cls"].sum().backward()
    for task, member in model.members.items():
        grads = [p.grad for p in member.parameters()]
        assert all(g is not None for g in grads) == (task == "cls"), task
    assert set(model(torch.rand(1, 3, 64, 64))) == {"seg", "det", "cls"}


# --- every strategy through the stages ---


@pytest.fixture(scope="module")
def stage1(tiny_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1's checkpoint of the small model, the starting point of every strategy."""
    root = tmp_path_factory.mktemp("stage1")
    train_stage(1, small_params(), stage_paths(root, tiny_mini, 1, None))
    return root / "stage1.pt"


def stage_paths(root: Path, mini: Path, stage: int, previous: Path | None) -> StagePaths:
    return StagePaths(
        mini=mini,
        previous=previous,
        checkpoint=root / f"stage{stage}.pt",
        snapshots=root / f"stage{stage}_epochs",
        metrics=root / f"stage{stage}.json",
        per_image=root / f"stage{stage}_val.json",
        timing=root / f"stage{stage}_time.json",
        plots=root / f"plots{stage}",
    )


@pytest.mark.parametrize("name", presets(REPO / "conf"))
def test_every_strategy_runs_stages_2_and_3(
    name: str, stage1: Path, tiny_mini: Path, tmp_path: Path
) -> None:
    params = small_params(f"strategy={name}")
    previous = stage1
    if name == "l2sp":  # it anchors the backbone to its ImageNet weights: lite0's ship offline
        params = small_params(f"strategy={name}", **PRETRAINED)
        previous = tmp_path / "stage1.pt"
        train_stage(1, params, stage_paths(tmp_path, tiny_mini, 1, None))
    for stage in (2, 3):
        paths = stage_paths(tmp_path, tiny_mini, stage, previous)
        metrics = train_stage(stage, params, paths)
        assert metrics["strategy"] == name
        assert list(metrics["final"]) == ["seg", "det", "cls"][:stage]
        model, checkpoint = load_checkpoint(paths.checkpoint)
        assert checkpoint["strategy"] == name and len(checkpoint["tasks"]) == stage
        assert set(model(torch.rand(1, 3, 64, 64))) >= set(checkpoint["tasks"])
        previous = paths.checkpoint
    if name == "gradnorm":
        with open(tmp_path / "plots3" / "strategy.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and {"w_seg", "w_det", "w_cls"} <= set(rows[0])
        for row in rows:
            assert sum(float(row[f"w_{t}"]) for t in ("seg", "det", "cls")) == pytest.approx(3)


def test_derpp_frozen_trains_only_the_neck_and_head(stage1: Path, tiny_mini: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """Stages 2 and 3 under derpp_frozen keep every backbone parameter as stage 1 saved it, train
    the neck's and the head's, and give the loaded model no backbone gradient."""
    params = small_params("strategy=derpp_frozen")
    previous = stage1
    for stage in (2, 3):
        paths = stage_paths(tmp_path, tiny_mini, stage, previous)
        train_stage(stage, params, paths)
        previous = paths.checkpoint
    start = torch.load(stage1, weights_only=True)["model"]
    model, checkpoint = load_checkpoint(previous)
    assert checkpoint["architecture"]["frozen"] == ["trunk.backbone"]
    assert not any(p.requires_grad for p in model.trunk.backbone.parameters())
    names = dict(model.named_parameters())
    backbone = [n for n in names if n.startswith("trunk.backbone.")]
    rest = [n for n in names if n not in backbone]
    assert backbone and all(torch.equal(names[n], start[n]) for n in backbone)
    policy = build_strategy(params.strategy, params.replay_buffer).load_model(
        lambda: build_model(checkpoint["architecture"]), checkpoint, checkpoint["tasks"]
    )
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == set(rest)
    assert any(not torch.equal(names[n], start[n]) for n in rest if n.startswith("trunk.neck."))
    assert any(not torch.equal(names[n], start[n]) for n in rest if n.startswith("head.hidden."))


def test_a_combination_no_preset_has_trains_with_each_part_in_effect(
    stage1: Path, tiny_mini: Path, tmp_path: Path
) -> None:
    """EWC + replay under GradNorm on a backbone frozen from stage 2, configured only: stages 2
    and 3 log the EWC penalty and the replayed losses, GradNorm's weights over the task losses
    (summing to their number), and leave the backbone as stage 1 saved it, bit for bit."""
    overrides = ["strategy=ewc", "strategy/terms=[replay,ewc]", "strategy/rule=gradnorm",
                 "+strategy.freeze.backbone=2",
                 "strategy.name=ewc_replay_gradnorm_frozen"]  # fmt: skip
    params = small_params(*overrides)
    previous = stage1
    for stage in (2, 3):
        paths = stage_paths(tmp_path, tiny_mini, stage, previous)
        metrics = train_stage(stage, params, paths)
        assert metrics["strategy"] == "ewc_replay_gradnorm_frozen"
        with open(paths.plots / "train.csv") as handle:
            columns = set(next(csv.reader(handle)))
        old = ["seg", "det"][: stage - 1]
        assert {"ewc/penalty"} | {f"{t}/total" for t in old} <= columns
        with open(paths.plots / "strategy.csv") as handle:
            rows = list(csv.DictReader(handle))
        tasks = ["seg", "det", "cls"][:stage]
        assert rows and set(rows[0]) == {"step"} | {f"w_{t}" for t in tasks}
        assert all(sum(float(r[f"w_{t}"]) for t in tasks) == pytest.approx(stage) for r in rows)
        assert len({r["w_seg"] for r in rows}) > 1
        previous = paths.checkpoint
    start = torch.load(stage1, weights_only=True)["model"]
    model, checkpoint = load_checkpoint(previous)
    assert checkpoint["architecture"]["frozen"] == ["trunk.backbone"]
    assert set(checkpoint["strategy_state"]) == {"ewc"}
    for name, value in model.state_dict().items():
        if name.startswith("trunk.backbone."):
            assert torch.equal(value, start[name]), name


def test_unknown_rule_fails_with_a_clear_message(stage1: Path, tiny_mini: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    params = small_params(strategy={"rule": {"name": "nope"}})
    with pytest.raises(
        ValueError, match=r"^strategy\.rule\.name: unknown rule 'nope'; known: gradnorm, pcgrad"
    ):
        train_stage(2, params, stage_paths(tmp_path, tiny_mini, 2, stage1))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("ewc", "terms.ewc.lambda", -1.0),
        ("ewc", "terms.ewc.gamma", 1.5),
        ("lwf", "terms.lwf.lambda", -0.1),
        ("lwf", "terms.lwf.temperature", 0),
        ("derpp", "terms.derpp.alpha", -0.5),
        ("derpp_frozen", "terms.derpp.alpha", -0.5),
        ("gradnorm", "rule.alpha", -1),
        ("gradnorm", "rule.lr", 0.0),
        ("gradnorm", "rule.old_weight", "one"),
        ("gradnorm", "rule.initial_steps", 0),
        ("uncertainty", "rule.lr", 0.0),
    ],
)
def test_bad_strategy_params_are_rejected_by_name(name: str, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^strategy\.{key.replace('.', '[.]')} must be"):
        make_strategy(f"strategy={name}", f"strategy.{key}={value}")
