"""What every stage script shares: its memory policy and failing with one clear message."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import sys
from collections.abc import Callable


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve every block from its heap and never hand freed memory back to
    the system, so each training step reuses the pages of the last one instead of mapping,
    faulting in and zeroing them again (docs/measurements.md, "Benchmark", for what it
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
