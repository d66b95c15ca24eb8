"""Building the configured model and loading saved checkpoints into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqmtl.config import Model
from seqmtl.data.datasets import class_names
from seqmtl.models.model import UnifiedModel, build_model


def model_factory(cfg: Model, mini: Path, seed: int) -> Any:
    """A function building the configured model afresh (same initialisation for the same seed),
    with class counts read from the mini datasets."""
    counts = {task: len(names) for task, names in class_names(mini).items()}

    def make() -> UnifiedModel:
        torch.manual_seed(seed)
        return UnifiedModel(
            counts,
            cfg.backbone,
            cfg.pretrained,
            cfg.channels,
            cfg.head_layers,
            cfg.batchnorm,
        )

    return make


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A saved model rebuilt from the architecture its checkpoint records (no strategy, no
    params), and the checkpoint itself."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "architecture" not in checkpoint:
        raise ValueError(f"{path}: no architecture record (a checkpoint of an older version)")
    model = build_model(checkpoint["architecture"])
    model.load_state_dict(checkpoint["model"])
    return model, checkpoint
