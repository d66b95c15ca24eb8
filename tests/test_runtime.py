"""`keep_freed_memory`: a warm training loop stops faulting pages in, and computes the same."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Eight forward + backward passes of a conv on 64 MB activations (above glibc's largest
# mmap threshold); prints whether the setting applied, the minor page faults of each pass and
# the accumulated gradient's bytes.
LOOP = """
import resource, sys, torch
from seqmtl.training.stage import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else False)
torch.manual_seed(0)
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
x = torch.rand(8, 32, 256, 256)
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    conv(x).relu().sum().backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(conv.weight.grad.numpy().tobytes().hex())
"""


def run_loop(mode: str) -> tuple[bool, list[int], str]:
    """Whether the setting applied, the page faults of each pass and the gradient's bytes, from
    a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", [int(n) for n in out[1:-1]], out[-1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_a_warm_loop_reuses_freed_memory_and_computes_the_same() -> None:
    pages = 8 * 32 * 256 * 256 * 4 // 4096  # of one activation
    applied, kept, kept_grad = run_loop("keep")
    _, default, default_grad = run_loop("default")
    assert applied
    assert min(default[-3:]) > pages  # by default every pass maps its activations afresh
    assert min(kept[-3:]) < pages // 100
    assert kept_grad == default_grad
