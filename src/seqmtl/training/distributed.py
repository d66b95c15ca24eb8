"""Data-parallel training over processes started by torchrun (`train.processes`).

A training stage with `train.processes: N > 1` starts itself again under
`python -m torch.distributed.run --standalone --nproc-per-node N` (torchrun); each process takes
1 / N of every global batch through a `DistributedSampler` seeded like the single-process
shuffle, so the N local batches of a step are together exactly the single process's batch, and
each sample's augmentation is drawn from (seed, epoch, index), whatever process loads it.

After a strategy's backward, `average_` all-reduces (sums, then divides by N) the gradient of
every trained parameter with `torch.distributed`, the collective DistributedDataParallel uses.
The model is not wrapped in DistributedDataParallel: strategies make several forward passes per
update (replay: one per task) and take per-task gradients with `torch.autograd.grad` (GradNorm,
PCGrad), neither of which its reducer supports. Where a strategy computes from per-task
gradients or losses, it averages those first (GradNorm's gradient norms and loss ratios,
PCGrad's task gradients), so every process takes the same step the single process would.
Evaluation and every write happen in rank 0 only (`is_main`). Backend: nccl on CUDA, else gloo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launch(n: int) -> None:
    """With N = `train.processes` > 1 and not yet under torchrun: run this script again with its
    arguments under torchrun, N processes on this machine, and exit with its exit code."""
    if n > 1 and not launched():
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={n}", sys.argv[0], *sys.argv[1:]]  # fmt: skip
        sys.exit(subprocess.run(command, check=False).returncode)


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; the device this process trains on
    (cuda:LOCAL_RANK on a GPU machine, else `device`)."""
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    """Leave the process group, if joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """The number of training processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process evaluates and writes (rank 0)."""
    return rank() == 0


def average_(tensors: Iterable[torch.Tensor | None]) -> None:
    """Replace each tensor, in place, by its mean over the processes (None skipped); nothing
    happens in a single process."""
    if world_size() == 1:
        return
    for tensor in tensors:
        if tensor is not None:
            dist.all_reduce(tensor)
            tensor.div_(world_size())


def barrier() -> None:
    """Wait for every process (nothing in a single process)."""
    if world_size() > 1:
        dist.barrier()
