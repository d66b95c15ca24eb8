"""Atomic writes: an interrupted stage never leaves a half-written output behind.

The temporary file or folder gets the permissions a plain `open` or `mkdir` would give it
under the process's umask (mkstemp and mkdtemp make them private to their owner), so outputs
stay readable by whoever may read the rest of the checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def umask() -> int:
    """The process's file-mode creation mask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of `final`; it replaces `final` on success, else is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~umask())
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, 0o666 & ~umask())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(name, final)
    finally:
        if os.path.exists(name):
            os.remove(name)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically (byte-identical for equal objects)."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def file_digest(path: Path, algo: str = "md5") -> str:
    """The hex digest of the file's bytes under hashlib's `algo`, read in 1 MiB chunks."""
    digest = hashlib.new(algo)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_png(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as a PNG, atomically and without the "Software" text chunk (the
    only metadata matplotlib writes that varies), so that the same figure gives the same bytes."""
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, metadata={"Software": None})
