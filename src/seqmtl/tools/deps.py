"""The code a dvc.yaml stage runs, found statically: what the stage lists as its code deps.

`code_deps` follows a script's imports with the standard library's `modulefinder`, which reads
the compiled code without running it. Every import statement counts, at module level or inside a
function (even one never executed), and so do the packages (`__init__.py`) an import runs. Only
the project's own files are searched: the script's folder (first on `sys.path` when Python runs
a script) and `src/`.

One import is dynamic: `seqmtl.strategies.build_strategy(section, …)` imports the modules of the
section's parts (`seqmtl.strategies.terms.<name>`, `seqmtl.strategies.rules.<name>`). The rule
for it (`stage_strategy`): a stage that the `strategy` param reaches, by reading it or by reading
an output of a stage it reaches (a checkpoint records its strategy), may build any strategy and
depends on the folder `src/seqmtl/strategies`; any other stage builds only the naive strategy
(stage 1 and the single-task references train naively) and depends on the sum rule's module and
what it imports.

A folder of `src/` whose every `.py` file (at any depth) is in a stage's deps stands for them
(`folders`): as exact as the files, and dvc.yaml stays short where a stage runs a whole
subpackage.
"""

from __future__ import annotations

import modulefinder
from pathlib import Path
from typing import Any

STRATEGIES = "seqmtl.strategies"
BUILDER = f"{STRATEGIES}.base"  # defines build_strategy
STRATEGY_FOLDER = "src/seqmtl/strategies"
NAIVE_PARTS = (f"{STRATEGIES}.rules.sum",)  # the parts `seqmtl.strategies.NAIVE` imports


def code_deps(script: Path, strategy: str | None, root: Path = Path(".")) -> list[str]:
    """Sorted POSIX paths, relative to `root`, of `script` (relative to `root`) and the project
    modules it imports, directly or not, whole folders as their folder (`folders`). Where these
    include `build_strategy`, `strategy` is the one the stage builds ("naive": its parts'
    modules and imports are added), or None for any: every module of STRATEGY_FOLDER and its
    imports are added."""
    root = Path(root).resolve()
    finder = modulefinder.ModuleFinder(path=[str((root / script).parent), str(root / "src")])
    finder.run_script(str(root / script))
    if BUILDER in finder.modules:
        parts = NAIVE_PARTS if strategy is not None else strategy_modules(root)
        for module in parts:
            finder.import_hook(module)
    files = {Path(m.__file__).resolve() for m in finder.modules.values() if m.__file__}
    deps = {p.relative_to(root).as_posix() for p in files if p.is_relative_to(root)}
    return sorted(folders(deps, root))


def strategy_modules(root: Path) -> list[str]:
    """Every module of STRATEGY_FOLDER under `root`, by dotted name."""
    src = root / "src"
    return sorted(
        ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for p in (root / STRATEGY_FOLDER).rglob("*.py")
    )


def python_files(root: Path, folder: str) -> set[str]:
    """The `.py` files under `folder` (relative to `root`), at any depth, relative to `root`."""
    return {p.relative_to(root).as_posix() for p in (root / folder).rglob("*.py")}


def folders(deps: set[str], root: Path) -> set[str]:
    """`deps` with the files of each folder under `src/` whose every `.py` file is in `deps`
    replaced by that folder (the outermost such folder where they nest)."""
    candidates = sorted({str(Path(d).parent) for d in deps if d.startswith("src/")}, key=len)
    whole: list[str] = []
    for folder in candidates:
        parents = [str(p) for p in Path(folder).parents]
        for depth in [*reversed(parents), folder]:
            inside = any(depth == w or depth.startswith(f"{w}/") for w in whole)
            if depth.startswith("src/") and not inside and python_files(root, depth) <= deps:
                whole.append(depth)
    kept = {d for d in deps if not any(d.startswith(f"{w}/") for w in whole)}
    return kept | set(whole)


def paths(entries: list[Any]) -> list[str]:
    """The paths of a dvc.yaml deps/outs/metrics/plots list (plain, or keys of `path: {…}`)."""
    return [p for e in entries for p in ([e] if isinstance(e, str) else e)]


def stage_strategy(name: str, stages: dict[str, dict[str, Any]]) -> str | None:
    """The strategy stage `name` of dvc.yaml's `stages` builds: None (any) if the `strategy` param
    reaches it (it reads it, or depends on an output of a stage that it reaches), else "naive"."""
    stage = stages[name]
    if "strategy" in stage.get("params", []):
        return None
    deps = set(paths(stage.get("deps", [])))
    for other, spec in stages.items():
        outs = paths(spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", []))
        if deps.intersection(outs) and stage_strategy(other, stages) is None:
            return None
    return "naive"


def stage_code_deps(name: str, stages: dict[str, dict[str, Any]], root: Path) -> list[str]:
    """`code_deps` of stage `name` of dvc.yaml's `stages`: of the `.py` script of its cmd, with
    the strategy of `stage_strategy`."""
    script = next(word for word in stages[name]["cmd"].split() if word.endswith(".py"))
    return code_deps(Path(script), stage_strategy(name, stages), root)
