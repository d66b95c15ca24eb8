"""The DVC pipeline end to end on a tiny synthetic config, in a temporary copy of the repo."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, ran, run, set_params
from seqmtl.tools.check import ALWAYS_RUN, status_clean

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project with the tiny params, reproduced once."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("src", "stages", ".dvc", "conf"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("tmp", "cache"))
    set_params(root, TINY)
    run(root, "git", "init", "-q")
    run(root, "dvc", "repro")
    return root


def test_first_repro_writes_every_output(repo: Path) -> None:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["seg"]["train"]["images"] == 8 and data["cls"]["val"]["images"] == 4
    final = json.loads((repo / "metrics" / "stage3.json").read_text())["final"]
    assert set(final) == {"seg", "det", "cls"}
    assert (repo / "data" / "checkpoints" / "stage3.pt").is_file()
    assert len(list((repo / "data" / "checkpoints" / "stage2_epochs").glob("*.pt"))) == 2
    raw = next(p for p in (repo / "data" / "raw").rglob("*") if p.is_file())
    assert raw.stat().st_nlink == 2  # a hard link to its copy in .dvc/cache: stored once


def test_second_repro_does_nothing(repo: Path) -> None:
    assert ran(run(repo, "dvc", "repro")) == set()
    assert status_clean(json.loads(run(repo, "dvc", "status", "--json")))
    always = {n for n, s in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items()
              if s.get("always_changed")}  # fmt: skip
    assert always == set(ALWAYS_RUN)


def test_param_changes_rerun_only_what_reads_them(repo: Path) -> None:
    set_params(repo, {"evaluate": {"max_drop": 0.1}})
    assert ran(run(repo, "dvc", "repro")) == {"evaluate"}
    set_params(repo, {"tasks": {"cls": {"epochs": 1}}})
    assert ran(run(repo, "dvc", "repro")) == {
        "stage3",
        "reference3",
        "evaluate",
        "gradients",
    }
    params = yaml.safe_load((repo / "params.yaml").read_text())
    replay = {"name": "replay", "terms": {"replay": {}}, "rule": {"name": "sum"}, "freeze": {},
              "trunk": "shared"}  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params | {"strategy": replay}))
    assert ran(run(repo, "dvc", "repro")) == {"stage2", "stage3", "evaluate", "gradients"}
    set_params(repo, {"subsample": {"n_val": 3}})
    assert ran(run(repo, "dvc", "repro", "subsample")) == {"subsample"}


def test_reproduction_check_passes_then_catches_a_changed_seed(repo: Path) -> None:
    run(repo, "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    assert "Reproduction check passed" in run(
        repo, sys.executable, "-m", "seqmtl.tools.check", "--exact"
    )
    set_params(repo, {"seed": 1})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "seqmtl.tools.check", "--exact"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Reproduction check FAILED" in result.stdout
    assert "metrics/stage1.json: final.seg.miou: committed" in result.stdout


def test_queued_sweep_comparison_and_export(repo: Path) -> None:
    run(repo, "git", "checkout", "--", "params.yaml")

    def sweep(*strategies: str) -> None:
        for strategy in strategies:
            run(repo, "dvc", "exp", "run", "--queue", "-S", f"strategy={strategy}", "-S", "seed=2")
        run(repo, "dvc", "queue", "start", "-j", "1")
        deadline = time.monotonic() + 600
        while re.search("Running|Queued", run(repo, "dvc", "queue", "status")):
            assert time.monotonic() < deadline, run(repo, "dvc", "queue", "status")
            time.sleep(5)
        assert "Failed" not in run(repo, "dvc", "queue", "status")

    # Seed 2 has never run in this repo (the check above left seed 1's outputs in place).
    sweep("naive")  # the first run of seed 2 computes its stage 1 and references ...
    sweep("replay")  # ... and the next one restores them from the run cache
    names = run(repo, "dvc", "exp", "ls", "--name-only").split()
    logs = {name: run(repo, "dvc", "queue", "logs", name) for name in names}
    first = [name for name, log in logs.items() if "Running stage 'stage1'" in log]
    assert len(names) == 2 and len(first) == 1
    (second,) = set(names) - set(first)
    assert "Running stage 'stage2'" in logs[second]
    for stage in ("stage1", "reference2", "reference3"):
        assert f"Running stage '{stage}'" not in logs[second]
    shown = run(repo, "dvc", "exp", "show", "--csv").splitlines()
    column = shown[0].split(",").index("profile")  # every run records its profile
    assert {row.split(",")[column] for row in shown[1:]} == {"synthetic"}
    output = run(repo, sys.executable, "-m", "seqmtl.tools.compare", "--name", "sweep")
    comparison = json.loads((repo / "results" / "comparisons" / "sweep.json").read_text())
    assert sorted(comparison["strategies"]) == ["naive", "replay"]
    assert all(2 in s["seeds"] for s in comparison["strategies"].values())
    assert (
        "| seg | naive - replay |" in output
        and (repo / "results" / "comparisons" / "sweep.png").is_file()
    )

    # The replay run kept in the repository: the files, figures and report `dvc exp apply` puts
    # in the workspace, the report's figure links resolving from its new folder.
    run(repo, sys.executable, "-m", "seqmtl.tools.export", second, "kept/replay")
    run(repo, "dvc", "exp", "apply", second)
    kept = repo / "results" / "kept" / "replay"
    figures = kept / "plots"
    for name in ("stage3.json", "reference_cls.json", "eval.json", "efficiency.json"):
        assert (kept / name).read_bytes() == (repo / "metrics" / name).read_bytes()
    assert (kept / "params.yaml").read_bytes() == (repo / "params.yaml").read_bytes()
    assert json.loads((kept / "eval.json").read_text())["strategy"] == "replay"
    pngs = sorted((repo / "plots" / "evaluate").glob("*.png"))
    assert pngs and [p.name for p in pngs] == sorted(p.name for p in figures.iterdir())
    assert all((figures / p.name).read_bytes() == p.read_bytes() for p in pngs)
    report, original = ((f / "report.md").read_text() for f in (kept, repo / "metrics"))
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert len(links) == len(pngs) and all((kept / link).is_file() for link in links)
    assert report.split("## Figures")[0] == original.split("## Figures")[0]
    missing = subprocess.run(
        [sys.executable, "-m", "seqmtl.tools.export", "no-such-run", "kept/none"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "'no-such-run': no such experiment" in missing.stderr
    assert not (repo / "results" / "kept" / "none").exists()


def pack_mirror(raw: Path, folder: Path) -> None:
    """The four official archives (names and layouts) of the raw layouts under `raw`, with their
    SHA256SUMS: a local mirror."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "imagenette2-160.tgz", "w:gz") as tf:
        tf.add(raw / "imagenette" / "imagenette2-160", "imagenette2-160")
    with tarfile.open(folder / "VOCtrainval_11-May-2012.tar", "w") as tf:
        tf.add(raw / "voc" / "VOCdevkit", "VOCdevkit")
    for name, sub in (("val2017.zip", "val2017"), ("annotations_trainval2017.zip", "annotations")):
        with zipfile.ZipFile(folder / name, "w") as zf:
            for path in sorted((raw / "coco" / sub).rglob("*")):
                zf.write(path, path.relative_to(raw / "coco").as_posix())
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.*")}
    (folder / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))


def test_a_changed_mirror_reruns_download_and_an_unchanged_one_does_not(
    tmp_path: Path, tiny_raw: Path
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("src", "stages", ".dvc", "conf"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("tmp", "cache"))
    mirror = tmp_path / "mirror"
    pack_mirror(tiny_raw, mirror)
    set_params(root, TINY | {"data": {"source": "download", "mirror": str(mirror)}})
    run(root, "git", "init", "-q")
    assert ran(run(root, "dvc", "repro", "subsample")) == {"download", "subsample"}
    assert ran(run(root, "dvc", "repro", "subsample")) == set()
    # the same path, one archive changed (an Imagenette image less) and its checksum with it
    changed = tmp_path / "changed"
    shutil.copytree(tiny_raw, changed)
    next((changed / "imagenette").rglob("*.JPEG")).unlink()
    pack_mirror(changed, mirror)
    assert ran(run(root, "dvc", "repro", "subsample")) == {"download", "subsample"}
    sources = json.loads((root / "data" / "sources.json").read_text())["archives"]
    digest = hashlib.sha256((mirror / "imagenette2-160.tgz").read_bytes()).hexdigest()
    assert sources["imagenette2-160.tgz"] == f"sha256:{digest}"


def test_another_task_order_runs_end_to_end(repo: Path) -> None:
    """The synthetic default in the order cls -> det -> seg, through `dvc exp run`: stage 1 learns
    cls, stage 2 det after it, stage 3 seg after both; the forgetting matrix and the report read
    in that order. det's reference (stage 2's task in both orders, same settings) comes from DVC's
    run cache; seg's is new."""
    out = run(repo, "dvc", "exp", "run", "-n", "cls-first", "-S", "sequence=[cls,det,seg]")
    assert "Running stage 'reference2'" not in out and "Running stage 'reference3'" in out
    metrics = repo / "metrics"
    learned = [json.loads((metrics / f"stage{s}.json").read_text())["task"] for s in (1, 2, 3)]
    assert learned == ["cls", "det", "seg"]
    evaluation = json.loads((metrics / "eval.json").read_text())
    assert evaluation["sequence"] == ["cls", "det", "seg"]
    rows = evaluation["matrix"]
    assert [set(rows[f"stage{s}"]) for s in (1, 2, 3)] == [
        {"cls"}, {"cls", "det"}, {"cls", "det", "seg"}
    ]  # fmt: skip
    assert set(evaluation["forgetting"]) == {"cls", "det", "mean"}
    assert (metrics / "reference_seg.json").is_file()
    report = (metrics / "report.md").read_text()
    assert "learns cls → det → seg" in report and "| 1 (cls) |" in report
