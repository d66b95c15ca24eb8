"""The replay buffer: a fixed sample of each old task's training set, the memory that the replay
and derpp terms draw on (params.yaml's `replay_buffer` section)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seqmtl.data.datasets import TaskDataset, collate


class ReplayBuffer:
    """`per_task` fixed training samples of each old task, drawn once with a seeded generator.

    Samples are drawn again through the dataset on every use, so they are augmented afresh.
    """

    def __init__(self, per_task: int, seed: int) -> None:
        self.per_task = per_task
        self.generator = torch.Generator().manual_seed(seed)
        self.items: dict[str, tuple[TaskDataset, Tensor]] = {}

    def add(self, task: str, dataset: TaskDataset) -> None:
        """Keep the indices of `per_task` samples of `dataset` (all of them if it has fewer)."""
        chosen = torch.randperm(len(dataset), generator=self.generator)[: self.per_task]
        self.items[task] = (dataset, chosen.sort().values)

    def sample(self, task: str, batch_size: int) -> tuple[Tensor, list[dict[str, Any]]]:
        """`batch_size` buffered samples of `task`, drawn uniformly with replacement."""
        dataset, indices = self.items[task]
        picks = indices[torch.randint(len(indices), (batch_size,), generator=self.generator)]
        return collate([dataset[int(i)] for i in picks])
