"""The front door cannot rot: README.md's make targets, `seqmtl` tools, `-S` overrides and links
(and those of CONTRIBUTING.md and docs/) all exist, and it stays within 200 lines."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest

from conftest import REPO
from seqmtl.config import compose
from seqmtl.tools.cli import TOOLS

README = (REPO / "README.md").read_text()


def code() -> list[str]:
    """The README's fenced blocks and inline code spans: where its commands are."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README, re.M | re.S)
    prose = re.sub(r"^```.*?^```", "", README, flags=re.M | re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def test_it_is_short() -> None:
    assert len(README.splitlines()) <= 200


def test_every_make_target_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    used = set(re.findall(r"\bmake ([a-z][a-z-]*)", "\n".join(code())))
    assert used and used <= targets, used - targets


def test_every_seqmtl_tool_exists() -> None:
    used = set(re.findall(r"\bseqmtl ([a-z]+)\b", "\n".join(code())))
    assert used and used <= set(TOOLS), used - set(TOOLS)


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        "CONTRIBUTING.md",
        *(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")),
    ],
)
def test_every_link_points_at_a_file(page: str) -> None:
    """The relative links of README, CONTRIBUTING and every docs/ page, from the page's folder."""
    path = REPO / page
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", path.read_text())]
    local = [link for link in links if link and "://" not in link]
    assert [link for link in local if not (path.parent / link).exists()] == []


def overrides() -> list[list[str]]:
    """The -S overrides of each `dvc exp run` command line of the README (placeholders `…`
    left out, a sweep's comma list, outside brackets, cut to its first choice)."""
    lines = [line for line in README.splitlines() if "dvc exp run" in line]
    found = []
    for line in lines:
        command = line[line.index("dvc exp run") :].split(" #")[0].split("`")[0]
        words = shlex.split(command)
        values = [v for flag, v in itertools.pairwise(words) if flag == "-S"]
        kept = [re.split(r",(?![^\[]*\])", v)[0] for v in values if "…" not in v]
        if kept:
            found.append(kept)
    return found


@pytest.mark.parametrize("line", overrides(), ids=" ".join)
def test_every_dvc_exp_run_override_composes(line: list[str]) -> None:
    compose(line, REPO / "conf")
