"""The `seqmtl` command line dispatches to each tool and names what it does not know."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib

from conftest import REPO
from seqmtl.tools.cli import TOOLS


def seqmtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqmtl.tools.cli", *args], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"seqmtl": "seqmtl.tools.cli:main"}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_answers_its_help(tool: str) -> None:
    result = seqmtl(tool, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: seqmtl {tool}")


def test_an_unknown_tool_is_named_and_the_list_shown() -> None:
    result = seqmtl("nope")
    assert result.returncode == 1 and "unknown tool 'nope'; known: compare" in result.stderr
    listing = seqmtl("--help")
    assert listing.returncode == 0 and all(tool in listing.stdout for tool in TOOLS)
