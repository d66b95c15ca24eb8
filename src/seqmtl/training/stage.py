"""What every stage script shares: its paths from the command line, its memory policy and
failing with one clear message."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import logging
import platform
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

P = TypeVar("P")


def parse_paths(
    kind: type[P], doc: str, positional: Sequence[tuple[str, dict[str, Any]]] = (),
    argv: Sequence[str] | None = None,
) -> tuple[P, argparse.Namespace]:  # fmt: skip
    """A stage's command line: the `positional` arguments (name, argparse options), then one
    --option per field of the dataclass `kind` (dashes for underscores): a path, required
    unless its type admits None, or one or more for a list. dvc.yaml's `cmd` is the one place
    that names the paths. Returns `kind` filled in, and every argument."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, options in positional:
        parser.add_argument(name, **options)
    hints = get_type_hints(kind)
    for field in dataclasses.fields(kind):  # type: ignore[arg-type]
        hint, flag = hints[field.name], "--" + field.name.replace("_", "-")
        if hint == list[Path]:
            parser.add_argument(flag, type=Path, nargs="+", required=True)
        else:
            optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
            parser.add_argument(flag, type=Path, required=not optional, default=None)
    args = parser.parse_args(argv)
    return kind(**{f.name: getattr(args, f.name) for f in dataclasses.fields(kind)}), args


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve every block from its heap and never hand freed memory back to
    the system, so each training step reuses the pages of the last one instead of mapping,
    faulting in and zeroing them again (docs/benchmark.md, for what it
    measured). Returns whether it applied: not on another C library, where nothing changes."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def run(main: Callable[[], None]) -> None:
    """Run a stage's main (with `keep_freed_memory`); a bad input or parameter ends it with one
    line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()
    try:
        main()
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
