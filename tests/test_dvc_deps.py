"""dvc.yaml lists as each stage's deps exactly the project files its script runs, and the
strategy's params where a stage trains with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dvc.api
import pytest
import yaml

from seqmtl.config import compose, templated
from seqmtl.tools.deps import code_deps, paths, stage_code_deps, stage_strategy

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
CODE = ("stages/", "src/")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_code_deps_follow_the_imports(name: str) -> None:
    listed = {dep for dep in paths(STAGES[name]["deps"]) if dep.startswith(CODE)}
    computed = set(stage_code_deps(name, STAGES, REPO))
    missing, extra = sorted(computed - listed), sorted(listed - computed)
    assert not (missing or extra), f"stage {name}: missing code deps {missing}, extra {extra}"


def test_strategy_rule_of_the_pipeline() -> None:
    naive = {name for name in STAGES if stage_strategy(name, STAGES) == "naive"}
    assert naive == {
        "sources", "download", "subsample", "stage1", "reference2", "reference3"
    }  # fmt: skip


def test_the_strategy_section_is_read_by_stages_2_and_3_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVC gives the whole `strategy` section (its name and params) to the stages that train with
    it, and to no other stage."""
    params = compose(["strategy=ewc"], REPO / "conf")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # params_show finds `stages` from the working directory
    for name in STAGES:
        shown = dvc.api.params_show(stages=[name], config={"core": {"no_scm": True}})
        readers = name in {"stage2", "stage3"}
        assert shown.get("strategy") == (params["strategy"] if readers else None), name


def _project(root: Path) -> None:
    files = {
        "stages/run.py": "from seqmtl.a import f\nfrom seqmtl.strategies import build\n",
        "stages/plain.py": "import seqmtl.c\n",
        "src/seqmtl/__init__.py": "",
        "src/seqmtl/a.py": "def f():\n    from seqmtl import b\n",
        "src/seqmtl/b.py": "import json\nimport seqmtl.c\n",
        "src/seqmtl/c.py": "",
        "src/seqmtl/unused.py": "",
        "src/seqmtl/strategies/__init__.py": "from seqmtl.strategies.base import build\n",
        "src/seqmtl/strategies/base.py": "def build():\n    pass\n",
        "src/seqmtl/strategies/rules/__init__.py": "",
        "src/seqmtl/strategies/rules/sum.py": "from seqmtl.strategies.base import build\n",
        "src/seqmtl/strategies/terms/__init__.py": "",
        "src/seqmtl/strategies/terms/replay.py": "from seqmtl import unused\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_code_deps_closure_and_strategy_rule(tmp_path: Path) -> None:
    _project(tmp_path)
    common = ["src/seqmtl/__init__.py", "src/seqmtl/a.py", "src/seqmtl/b.py", "src/seqmtl/c.py"]
    # any strategy: every strategy module and what it imports (unused.py, through replay.py),
    # which makes every file of the package: the folder stands for them all
    assert code_deps(Path("stages/run.py"), None, tmp_path) == ["src/seqmtl", "stages/run.py"]
    # the naive strategy: the sum rule; every file of rules/ is in, so the folder stands for them
    strategies = ["__init__.py", "base.py", "rules"]
    assert code_deps(Path("stages/run.py"), "naive", tmp_path) == sorted(
        [*common, *(f"src/seqmtl/strategies/{s}" for s in strategies), "stages/run.py"]
    )
    plain = ["src/seqmtl/__init__.py", "src/seqmtl/c.py", "stages/plain.py"]
    assert code_deps(Path("stages/plain.py"), None, tmp_path) == plain


def test_stage_strategy_follows_outputs() -> None:
    stages = {
        "first": {"cmd": "python a.py", "outs": ["x"]},
        "second": {"cmd": "python b.py", "deps": ["x"], "params": ["strategy"], "outs": ["y"]},
        "third": {"cmd": "python c.py", "deps": ["y"], "metrics": [{"m.json": {"cache": False}}]},
        "fourth": {"cmd": "python d.py", "deps": ["m.json"]},
    }
    assert [stage_strategy(name, stages) for name in stages] == ["naive", None, None, None]


def declared_outputs(pipeline: dict) -> set[str]:
    """Every path dvc.yaml declares as a stage's output (outs, metrics, plots) or lists in its
    top-level `metrics:` and `plots:`."""
    found = set(pipeline.get("metrics", []))
    for spec in pipeline["stages"].values():
        found |= set(paths(spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", [])))
    for plot in pipeline.get("plots", []):
        for spec in plot.values() if isinstance(plot, dict) else [{plot: None}]:
            found |= set(spec.get("y", {}) if isinstance(spec, dict) and "y" in spec else spec)
    return found


# metrics/report.md holds the run's timings beside its metrics, so it cannot be a deterministic
# output; evaluate writes it undeclared, as dvc.yaml's comment above the stage says.
UNDECLARED = {"metrics/report.md"}


def test_metrics_and_plots_hold_only_what_the_pipeline_writes() -> None:
    """Archived runs, comparisons, benchmarks and tolerances live under results/."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    declared = declared_outputs(templated(pipeline, params))
    tracked = subprocess.run(
        ["git", "ls-files", "metrics", "plots"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked
    stray = [
        path for path in tracked
        if path not in UNDECLARED
        and not any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)
    ]  # fmt: skip
    assert stray == []
