"""Resuming a stage that was stopped: what a training stage keeps between its snapshots.

Every `train.checkpoint_every` epochs a stage writes `<resume>/state.pt` (atomically): the model,
optimizer and scheduler states, the strategy's step state (`Strategy.resume_state`), the step,
the logged rows, the random number generators' states and the time spent, with a fingerprint of
what the stage started from. The epoch snapshots written so far are linked into
`<resume>/snapshots/`. A stage that finds a state with its own fingerprint restores it after
building everything as a fresh start would (so the strategy's stage-start state, a frozen
teacher or recorded outputs, is rebuilt from the same stage-start model), and continues with the
next epoch; the result is the bytes of an uninterrupted run. The folder is removed when the stage
has written its outputs. It lives outside the stage's declared outputs (which DVC deletes before
it reruns a stage).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqmtl.files import atomic_file, file_digest

STATE = "state.pt"
SNAPSHOTS = "snapshots"


def fingerprint(stage: str, settings: str, previous: Path | None, mini: Path) -> str:
    """A digest of what a stage's run depends on: its name, its params (`settings`, their repr),
    the previous checkpoint's bytes and the mini datasets' files (path, size, modification
    time); a change of any of them starts the stage afresh."""
    digest = hashlib.sha256(f"{stage}\n{settings}\n".encode())
    if previous is not None:
        digest.update(file_digest(previous).encode())
    for path in sorted(Path(mini).rglob("*")):
        if path.is_file():
            info = path.stat()
            digest.update(f"{path.relative_to(mini)} {info.st_size} {info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CUDA's where present)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, state: dict[str, Any], snapshots: list[Path]) -> None:
    """Write `state` to `folder`/state.pt atomically, after linking (or copying) the epoch
    `snapshots` written so far into `folder`/snapshots."""
    kept = Path(folder) / SNAPSHOTS
    kept.mkdir(parents=True, exist_ok=True)
    for snapshot in snapshots:
        target = kept / snapshot.name
        if not target.exists():
            try:
                os.link(snapshot, target)
            except OSError:
                shutil.copy2(snapshot, target)
    with atomic_file(Path(folder) / STATE, "wb") as handle:
        torch.save(state, handle)


def load(folder: Path, expected: str) -> tuple[dict[str, Any], list[Path]] | None:
    """The saved state and snapshots of `folder` when its fingerprint is `expected`, else None
    (nothing saved, or saved by a run of other params or inputs)."""
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != expected:
        return None
    return state, sorted((Path(folder) / SNAPSHOTS).glob("*.pt"))


def clear(folder: Path) -> None:
    """Remove what a finished stage no longer needs."""
    shutil.rmtree(folder, ignore_errors=True)
