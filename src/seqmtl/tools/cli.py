"""One command line for the project's tools: `seqmtl TOOL [ARGS ...]`, `seqmtl TOOL --help`.

Each tool is a module's `main` (also `python -m seqmtl.tools.TOOL`); this only dispatches to it."""

from __future__ import annotations

import importlib
import sys

TOOLS = {
    "compare": "strategy comparison over seeds, from DVC experiments",
    "check": "does dvc repro reproduce the committed results (within the measured tolerances)?",
    "tolerance": "measure the reproduction tolerances under perturbed rounding",
    "bench": "inference and training speed, timed interleaved",
    "export": "keep one experiment's results under results/NAME/",
    "curve": "the detection reference's learning curve, from DVC experiments",
}


def usage() -> str:
    lines = [f"  {name:<10} {text}" for name, text in TOOLS.items()]
    return "usage: seqmtl TOOL [ARGS ...]   (seqmtl TOOL --help for its own)\n\n" + "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if len(sys.argv) > 1 else 2)
    tool = sys.argv[1]
    if tool not in TOOLS:
        sys.exit(f"seqmtl: unknown tool {tool!r}; known: {', '.join(TOOLS)}")
    sys.argv = [f"seqmtl {tool}", *sys.argv[2:]]
    importlib.import_module(f"seqmtl.tools.{tool}").main()


if __name__ == "__main__":
    main()
