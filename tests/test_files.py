"""Tests for seqmtl.files: atomic writes keep the old output on failure and get normal modes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqmtl.files import atomic_dir, atomic_file


@pytest.fixture(params=[0o022, 0o077])
def mask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask, restoring the previous one after it."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_modes_open_and_mkdir_would_give(tmp_path: Path, mask: int) -> None:
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    with atomic_file(tmp_path / "out.txt") as handle:
        handle.write("x")
    with atomic_dir(tmp_path / "out") as folder:
        (folder / "inner.txt").write_text("x")
    assert mode(tmp_path / "out.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask
    assert mode(tmp_path / "out") == mode(tmp_path / "plain") == 0o777 & ~mask


def test_a_failed_write_keeps_the_old_output_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "out.txt") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "out.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
