"""Strategy comparison: aggregation over seeds and the paired test, on hand-made experiments."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from conftest import REPO
from seqmtl.config import compose
from seqmtl.tools.compare import aggregate, current, main, plot, read_runs, render, select

BASE = {
    "seed": 0,
    "strategy": "naive",
    "data": {"source": "synthetic"},
    "stage1": {"epochs": 6},
    "stage2": {"epochs": 6},
    "stage3": {"epochs": 8},
}
# The runs below record their params in the layout of their day: `strategy` a name, each
# strategy's params in a section of its own, settings per stage (`compare.current` reads them in
# today's layout).


def base(strategy: str, **options: object) -> dict:
    """The params a run of `strategy` (with `options` of its parts) must have to count (today's
    layout)."""
    return current(BASE | {"strategy": {"name": strategy, **options}})


def task_entry(final: float, baseline: float, reference: float = 0.8) -> dict:
    relative = round((baseline - final) / baseline, 6)
    verdict = "pass" if relative <= 0.05 else "fail"
    entry = {"absolute": round(baseline - final, 6), "relative": relative, "verdict": verdict}
    return {"metric": "m", "final": final, "baseline": baseline, "vs_baseline": entry,
            "vs_reference": entry | {"value": reference}}  # fmt: skip


def revision(name: str, params: dict, finals: dict[str, float], seconds: float) -> dict:
    reference = 0.8 + 0.01 * params["seed"]  # the same for every strategy of a seed
    tasks = {task: task_entry(final, 0.8, reference) for task, final in finals.items()}
    runs = {"stage2": {"train_seconds": seconds / 2}, "stage3": {"train_seconds": seconds / 2}}
    metrics = {
        "metrics/eval.json": {"data": {"tasks": tasks}},
        "metrics/efficiency.json": {"data": {"training": {"runs": runs}}},
    }
    return {"rev": name * 8, "name": name, "data": {"params": {"params.yaml": {"data": params}},
                                                    "metrics": metrics}}  # fmt: skip


FINALS = {  # (strategy, seed) -> seg final; det and cls fixed
    ("naive", 0): 0.10, ("naive", 1): 0.12, ("naive", 2): 0.08,
    ("replay", 0): 0.70, ("replay", 1): 0.74, ("replay", 2): 0.69,
    ("lwf", 0): 0.11, ("lwf", 1): 0.12, ("lwf", 2): 0.10,
}  # fmt: skip


def exp_show() -> list[dict]:
    """A `dvc exp show --json` with the committed run, the sweep, and runs that must not count."""
    experiments = []
    for (strategy, seed), seg in FINALS.items():
        params = BASE | {"strategy": strategy, "seed": seed}
        rev = revision(f"{strategy}{seed}", params, {"seg": seg, "det": 0.5, "cls": 0.9}, 60 + seed)
        executor = {"state": "success"} if seed else None  # as queued runs / workspace runs
        experiments.append({"revs": [rev], "executor": executor, "name": rev["name"]})
    other = BASE | {"strategy": "replay", "data": {"source": "download"}}
    running = BASE | {"strategy": "ewc"}
    experiments += [
        {"revs": [revision("real", other, {"seg": 0.0, "det": 0, "cls": 0}, 1)], "executor": None},
        {"revs": [revision("run", running, {"seg": 0.3, "det": 0, "cls": 0}, 1)],
         "executor": {"state": "running"}},
    ]  # fmt: skip
    committed = revision("main", BASE, {"seg": 0.10, "det": 0.5, "cls": 0.9}, 58)
    return [{"rev": "workspace", "data": {}}, committed | {"experiments": experiments}]


@pytest.fixture
def comparison() -> dict:
    return aggregate(select(read_runs(exp_show()), base, {}))


def test_only_matching_finished_runs_count(comparison: dict) -> None:
    assert set(comparison["strategies"]) == {"naive", "replay", "lwf"}
    assert all(s["seeds"] == [0, 1, 2] for s in comparison["strategies"].values())
    real = select(read_runs(exp_show()), base, {"data.source": "download"})
    assert [r["name"] for r in real] == ["real"]


def test_mean_and_sample_std(comparison: dict) -> None:
    seg = comparison["strategies"]["replay"]["tasks"]["seg"]
    values = [0.70, 0.74, 0.69]
    assert seg["final"]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert seg["final"]["std"] == pytest.approx(statistics.stdev(values), abs=1e-6)
    drops = [(0.8 - v) / 0.8 for v in values]
    assert seg["relative_drop"]["mean"] == pytest.approx(statistics.fmean(drops), abs=1e-6)
    assert seg["pass_rate"] == 0.0  # every seed drops by about 10 %
    assert comparison["strategies"]["naive"]["tasks"]["cls"]["pass_rate"] == 1.0  # 0.9 > 0.8
    assert comparison["strategies"]["lwf"]["training_seconds"]["mean"] == pytest.approx(61)


def test_single_task_reference_over_seeds(comparison: dict, tmp_path: Path) -> None:
    reference = comparison["tasks"]["det"]["reference"]
    assert reference["n"] == 3
    assert reference["mean"] == pytest.approx(0.81) and reference["std"] == pytest.approx(0.01)
    assert "| det | 0.810 ± 0.010 | 3 |" in render(comparison, "c", {})


def test_timing_restored_from_run_cache_is_not_counted() -> None:
    """A run whose stages 2 and 3 DVC restored keeps its commit's timing files: no time of its
    own. A later duplicate of the same (strategy, seed) that timed them is chosen instead."""
    show = exp_show()
    replay1 = show[1]["experiments"][4]["revs"][0]
    assert replay1["name"] == "replay1"
    cached = json.loads(json.dumps(replay1)) | {"name": "cached"}
    committed = show[1]["data"]["metrics"]["metrics/efficiency.json"]
    cached["data"]["metrics"]["metrics/efficiency.json"] = committed
    show[1]["experiments"].insert(0, {"revs": [cached], "executor": None, "name": "cached"})
    runs = read_runs(show)
    assert next(r for r in runs if r["name"] == "cached")["seconds"] == {}
    chosen = select(runs, base, {})
    assert "replay1" in [r["name"] for r in chosen] and "cached" not in [r["name"] for r in chosen]
    alone = select([r for r in runs if r["name"] != "replay1"], base, {})
    replay = aggregate(alone)["strategies"]["replay"]
    assert replay["seeds"] == [0, 1, 2]
    assert replay["training_seconds"] == {"mean": 61.0, "std": pytest.approx(1.414214), "n": 2}


def with_lwf_sections() -> list[dict]:
    """exp_show's runs, each recording an lwf section (old layout): λ 10 in the lwf runs, 1 in
    the others."""
    show = exp_show()
    for exp in show[1]["experiments"]:
        params = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
        params["lwf"] = {"lambda": 10.0 if params["strategy"] == "lwf" else 1.0}
    return read_runs(show)


def test_old_runs_read_in_today_s_layout() -> None:
    """A run's own section becomes its strategy's params; the other strategies' sections (no
    stage of it read them) are dropped, so they do not split a sweep; its own section does."""
    runs = with_lwf_sections()
    lwf = next(r for r in runs if r["name"] == "lwf0")["params"]
    assert lwf["strategy"] == compose(["strategy=lwf", "strategy.terms.lwf.lambda=10"])["strategy"]
    assert "lwf" not in lwf
    replay = next(r for r in runs if r["name"] == "replay0")["params"]["strategy"]
    assert replay == compose(["strategy=replay"])["strategy"]

    def default(strategy: str) -> dict:
        return base(strategy, **({"lambda": 1.0} if strategy == "lwf" else {}))

    chosen = {r["name"] for r in select(runs, default, {})}
    assert {"replay0", "replay1", "replay2"} <= chosen
    assert not {n for n in chosen if n.startswith("lwf")}


def test_a_strategy_s_fixed_param_binds_only_its_runs() -> None:
    """`-S strategy.terms.lwf.lambda=…` selects the lwf runs with that value and keeps the other
    strategies' (which have no lwf term)."""
    runs = with_lwf_sections()

    def default(strategy: str) -> dict:
        return base(strategy, **({"lambda": 1.0} if strategy == "lwf" else {}))

    tuned = {r["name"] for r in select(runs, default, {"strategy.terms.lwf.lambda": 10.0})}
    assert {"lwf0", "lwf1", "lwf2", "replay0", "replay1", "replay2", "naive1"} <= tuned
    untuned = {r["name"] for r in select(runs, default, {"strategy.terms.lwf.lambda": 1.0})}
    assert "replay0" in untuned and not {n for n in untuned if n.startswith("lwf")}


def test_undefined_relative_drop() -> None:
    """`dvc exp show` drops the null relative drop of a task that was never learned."""
    runs = select(read_runs(exp_show()), base, {})
    for run in runs:
        if run["params"]["strategy"]["name"] == "lwf":
            entry = run["metrics"]["metrics/eval.json"]["tasks"]["cls"]["vs_baseline"]
            del entry["relative"]
            entry["verdict"] = "not learned"
    cls = aggregate(runs)["strategies"]["lwf"]["tasks"]["cls"]
    assert cls["relative_drop"] is None and cls["pass_rate"] == 0


def test_relative_drop_over_fewer_seeds_is_counted(tmp_path: Path) -> None:
    """A seed whose relative drop is undefined is left out of the mean, and the table says so."""
    runs = select(read_runs(exp_show()), base, {})
    for run in runs:
        if run["params"]["strategy"]["name"] == "naive" and run["params"]["seed"] == 2:
            del run["metrics"]["metrics/eval.json"]["tasks"]["seg"]["vs_baseline"]["relative"]
    comparison = aggregate(runs)
    seg = comparison["strategies"]["naive"]["tasks"]["seg"]["relative_drop"]
    assert seg["n"] == 2
    assert seg["mean"] == pytest.approx(statistics.fmean([0.875, 0.85]), abs=1e-6)
    text = render(comparison, "comparison", {})
    assert "| 86.2 ± 1.8 (2 of 3 seeds) |" in text
    assert text.count("of 3 seeds)") == 1
    plot(comparison, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_paired_flag(comparison: dict) -> None:
    seg = comparison["pairs"]["seg"]
    replay, naive = [FINALS["replay", s] for s in range(3)], [FINALS["naive", s] for s in range(3)]
    assert seg["naive - replay"]["p_value"] == pytest.approx(
        ttest_rel(naive, replay).pvalue, abs=1e-6
    )
    assert not seg["naive - replay"]["within_noise"]
    assert seg["lwf - naive"]["within_noise"]  # +0.01 on average, inconsistent across seeds
    det = comparison["pairs"]["det"]["naive - replay"]
    assert det["difference"] == 0 and det["p_value"] is None and det["within_noise"]


def test_benjamini_hochberg_q_values(comparison: dict) -> None:
    """q = min over ranks j >= i of p_(j) * m / j, computed by hand over the task's pairs."""
    seg = comparison["pairs"]["seg"]
    ranked = sorted((t["p_value"], pair) for pair, t in seg.items() if t["p_value"] is not None)
    m = len(ranked)
    for i, (_, pair) in enumerate(ranked):
        expected = min(1.0, *(ranked[j][0] * m / (j + 1) for j in range(i, m)))
        assert seg[pair]["q_value"] == pytest.approx(expected, abs=1e-5)
        assert seg[pair]["within_noise"] == (expected >= 0.05)
    smallest = seg[ranked[0][1]]
    assert m == 3 and smallest["q_value"] == pytest.approx(3 * smallest["p_value"], abs=1e-5)
    assert comparison["pairs"]["det"]["naive - replay"]["q_value"] is None


def test_rendered_table(comparison: dict, tmp_path: Path) -> None:
    text = render(comparison, "comparison", {})
    assert "| replay | 0,1,2 | seg (m) | 0.800 ± 0.000 | 0.710 ± 0.026 |" in text
    assert "| seg | naive - replay | -0.610 |" in text and "**differs**" in text


def test_command_writes_table_json_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    show = exp_show()
    for exp in show[1]["experiments"]:  # runs of the default composition, in today's layout
        params = exp["revs"][0]["data"]["params"]["params.yaml"]
        name, seed = params["data"]["strategy"], params["data"]["seed"]
        params["data"] = compose([f"strategy={name}", f"seed={seed}"], REPO / "conf")
    (tmp_path / "show.json").write_text(json.dumps(show))
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["compare", "--input", "show.json", "--name", "cmp"])
    main()
    out = tmp_path / "results" / "comparisons"
    saved = json.loads((out / "cmp.json").read_text())
    assert set(saved["strategies"]) == {"naive", "replay", "lwf"} and saved["fixed"] == {}
    assert (out / "cmp.md").read_text().startswith("# Strategy comparison")
    assert (out / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    argv = ["compare", "--input", "show.json", "-S", "tasks.cls.epochs=99"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="no finished run matches"):
        main()


def test_a_composition_named_by_its_runs_is_compared_as_itself() -> None:
    """Runs of a strategy that no preset has (`-S strategy.name=ewc_replay` with its parts) are
    grouped under their name when their other params are the default's; the others' still need
    their preset's composition."""
    show = exp_show()
    composed = compose(["strategy=ewc", "strategy/terms=[replay,ewc]", "strategy.name=ewc_replay"])
    for exp in show[1]["experiments"]:
        params = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
        if params["strategy"] == "lwf":
            params["strategy"] = composed["strategy"]

    def known(strategy: str) -> dict | None:
        return base(strategy) if strategy != "ewc_replay" else None

    chosen = select(read_runs(show), known, {})
    names = {r["params"]["strategy"]["name"] for r in chosen}
    assert names == {"naive", "replay", "ewc_replay"}
    assert len([r for r in chosen if r["params"]["strategy"]["name"] == "ewc_replay"]) == 3
