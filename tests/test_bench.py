"""The benchmark's training timing runs the pipeline's own step: the model is updated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO
from seqmtl.data.datasets import class_names
from seqmtl.models.model import UnifiedModel
from seqmtl.tools.bench import training_timings


def test_training_timing_takes_real_optimizer_steps(
    tiny_mini: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the step's optimizer settings come from params.yaml
    torch.manual_seed(0)
    counts = {task: len(names) for task, names in class_names(tiny_mini).items()}
    model = UnifiedModel(counts, "mobilenet_v3_small", False, 16, 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    timings = training_timings(model, tiny_mini, "seg", torch.device("cpu"), 64, 4, rounds=2)
    assert timings["rounds"] == 2 and timings["step_images_per_second"] > 0
    assert timings["step_vs_backbone_speed"] > 0
    head = [n for n in before if n.startswith("head.")]
    assert head and all(not torch.equal(before[n], model.get_parameter(n)) for n in head)
