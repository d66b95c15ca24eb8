"""Strategy comparison over seeds, collected from DVC experiments.

    python -m seqmtl.tools.compare [--name comparison] [-S key=value ...] [--rev REV ...]
                             [--input exp_show.json]

Reads `dvc exp show --json --rev REV` for each REV (default HEAD; or `--input`, a saved copy):
the run committed at REV and every finished experiment based on it. A run takes part when its
params equal the composition of its profile and strategy (`-S profile=NAME`, default synthetic,
and `strategy=<its name>`: `seqmtl.config.compose`) except for `seed`, `data.mirror` (where the
archives were read from, a machine's path) and the keys given with `-S` (which it must match; a
`strategy.KEY` binds only the runs whose strategy has KEY), so runs of another configuration
(real data, other epochs, a tuned strategy) never mix in; one run per (strategy, seed),
preferring one that timed its own stages 2 and 3 (a run whose stages DVC restored from its run
cache has no training time of its own). Writes results/comparisons/<name>.json, <name>.md (the
table) and <name>.png:

- per task, over seeds: mean ± sample std of its single-task reference (`tasks.<task>.reference`);
- per strategy and task, over seeds: mean ± sample std (n - 1) of the final metric and of its
  relative drop from the task's own baseline, and the rate of ≤ max_drop verdicts (against the
  baseline and against the single-task reference); per strategy, the training time of stages
  2 and 3;
- per task, every pair of strategies run with the same seeds: the mean paired difference of the
  final metric and a two-sided paired t-test over seeds, its p-value adjusted over the task's
  pairs by Benjamini-Hochberg (q, the false discovery rate of calling a pair different); the
  difference is flagged "within noise" when q >= 0.05 (or fewer than 2 paired seeds, or
  identical differences of zero).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from scipy.stats import false_discovery_control, ttest_rel
from scipy.stats import t as student_t

from seqmtl.config import compose, presets
from seqmtl.data.datasets import TASKS
from seqmtl.files import atomic_file, save_png, write_json
from seqmtl.tools.check import dvc, flatten

ALPHA = 0.05
VERDICTS = ("pass", "undecided", "fail", "not learned")
VARIED = ("strategy.name", "seed", "data.mirror")
COMPARISONS = Path("results/comparisons")

Run = dict[str, Any]


def read_runs(exp_show: list[dict[str, Any]]) -> list[Run]:
    """Params, metrics and own training seconds per stage of each committed run and of its
    finished experiments. A stage that DVC restored from its run cache was not timed in that
    experiment: evaluate lists it under `untimed` (`evaluate.read_timing`), and an entry equal
    to its commit's (an experiment evaluated before timings recorded their metrics' digest) is
    left out too."""
    runs = []
    for commit in exp_show:
        if commit["rev"] == "workspace":
            continue
        revisions = [commit] + [
            rev for exp in commit.get("experiments") or [] for rev in exp["revs"]
            if (exp.get("executor") or {}).get("state", "success") == "success"
        ]  # fmt: skip
        committed: dict[str, Any] = {}
        for rev in revisions:
            data = rev.get("data") or {}
            metrics = {p: m.get("data", {}) for p, m in (data.get("metrics") or {}).items()}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data")
            efficiency = metrics.get("metrics/efficiency.json", {}).get("training", {})
            timed = {
                stage: entry["train_seconds"]
                for stage, entry in efficiency.get("runs", {}).items()
                if rev is commit or entry != committed.get(stage)
            }
            if rev is commit:
                committed = efficiency.get("runs", {})
            if params and "metrics/eval.json" in metrics:
                runs.append({"name": rev.get("name") or rev["rev"][:7], "params": current(params),
                             "metrics": metrics, "seconds": timed})  # fmt: skip
    return runs


def current(params: dict[str, Any]) -> dict[str, Any]:
    """A run's params in today's layout. A run made before `sequence` (stage sections
    stage1-3) gets the default order and its sections keyed by task. A run made when `strategy`
    was a name and each strategy
    had its own top-level section, or when the section held a preset's name and params
    (`strategy: {name, lambda, …, replay}`), gets its preset's parts with those params set in the
    part that holds each (`replay: true`: the replay term first); the other strategies' sections
    (which none of its stages read) are dropped."""
    if "stage1" in params:  # before the order was a param and settings were keyed by task
        stages = [params[f"stage{s}"] for s in (1, 2, 3)]
        kept = {k: v for k, v in params.items() if k not in ("stage1", "stage2", "stage3")}
        tasks = dict(zip(TASKS, stages, strict=True))
        return current(kept | {"sequence": list(TASKS), "tasks": tasks})
    strategy = params.get("strategy")
    if isinstance(strategy, str):
        kept = {k: v for k, v in params.items() if k not in presets() and k != "strategy"}
        return current(kept | {"strategy": {"name": strategy, **(params.get(strategy) or {})}})
    if "terms" in strategy:
        return params
    options = {k: v for k, v in strategy.items() if k != "name"}
    section = compose([f"strategy={strategy['name']}"])["strategy"]
    if options.pop("replay", False):
        section["terms"] = {"replay": {}} | section["terms"]
    parts = [*section["terms"].values(), section["rule"]]
    for key, value in options.items():
        holder = next(part for part in parts if key in part)
        holder[key] = value
    return params | {"strategy": section}


def select(
    runs: list[Run], base: Callable[[str], dict[str, Any] | None], fixed: dict[str, Any]
) -> list[Run]:
    """Runs equal to `base(their strategy's name)` except for VARIED and `fixed` (which they must
    match; a `strategy.KEY` binds only the runs whose strategy has KEY), one per (strategy,
    seed): the first listed with its own training time of stages 2 and 3, else the first. A run
    whose strategy's name is no preset's (`base` gives None: a composition named by its runs,
    `-S strategy.name=…`) is compared with the naive preset's params outside its strategy."""
    chosen: dict[tuple[str, int], Run] = {}
    for run in runs:
        flat = flatten(run["params"])
        reference = base(flat["strategy.name"])
        if reference is None:
            own = {k: v for k, v in flat.items() if k.startswith("strategy.")}
            rest = flatten(base("naive")).items()
            base_flat = {k: v for k, v in rest if not k.startswith("strategy.")} | own
        else:
            base_flat = flatten(reference)
        binding = {k for k in fixed if not k.startswith("strategy.") or k in flat}
        keys = set(base_flat) | set(flat)
        if any(flat.get(k) != fixed[k] for k in binding) or any(
            flat.get(k) != base_flat.get(k) for k in keys - set(VARIED) - set(fixed)
        ):
            continue
        key = (flat["strategy.name"], flat["seed"])
        if key not in chosen or (
            training_seconds(chosen[key]) is None and training_seconds(run) is not None
        ):
            chosen[key] = run
    return list(chosen.values())


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (None for a single value), 6 decimals."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {
        "mean": round(statistics.fmean(values), 6),
        "std": None if std is None else round(std, 6),
        "n": len(values),
    }


def paired_test(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of a - b and the two-sided paired t-test's p-value (None when it cannot be
    computed)."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    p = None
    if len(differences) > 1 and any(differences):
        p = float(ttest_rel(a, b).pvalue)
        p = None if math.isnan(p) else round(p, 6)
    return {"difference": round(statistics.fmean(differences), 6), "p_value": p,
            "seeds": len(differences)}  # fmt: skip


def flag_within_noise(tests: dict[str, dict[str, Any]]) -> None:
    """Adds to each test of the family `tests` its Benjamini-Hochberg q-value (None where no
    test was possible) and its flag: within noise when q is None or q >= ALPHA."""
    tested = [test for test in tests.values() if test["p_value"] is not None]
    q_values = false_discovery_control([t["p_value"] for t in tested]) if tested else []
    for test in tests.values():
        test["q_value"] = None
    for test, q in zip(tested, q_values, strict=True):
        test["q_value"] = round(float(q), 6)
    for test in tests.values():
        test["within_noise"] = test["q_value"] is None or test["q_value"] >= ALPHA


def training_seconds(run: Run) -> float | None:
    """Training time of stages 2 and 3, which every strategy runs itself, where both were timed
    in this run (None where DVC restored them from its run cache)."""
    seconds = run["seconds"]
    if not {"stage2", "stage3"} <= set(seconds):
        return None
    return round(seconds["stage2"] + seconds["stage3"], 2)


def final_metrics(seeds: dict[int, Run], task: str, which: list[int]) -> list[float]:
    """The final metric of `task` in the runs of the seeds `which`."""
    return [seeds[s]["metrics"]["metrics/eval.json"]["tasks"][task]["final"] for s in which]


def task_statistics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics over seeds of one task's eval.json entries (a relative drop that is not
    defined is null in eval.json, and `dvc exp show` leaves nulls out)."""
    relative = [r["vs_baseline"].get("relative") for r in rows]
    return {
        "metric": rows[0]["metric"],
        "baseline": mean_std([r["baseline"] for r in rows]),
        "final": mean_std([r["final"] for r in rows]),
        "drop": mean_std([r["vs_baseline"]["absolute"] for r in rows]),
        "relative_drop": mean_std([r for r in relative if r is not None])
        if any(r is not None for r in relative)
        else None,
        "pass_rate": round(
            statistics.fmean(r["vs_baseline"]["verdict"] == "pass" for r in rows), 6
        ),
        "pass_rate_vs_reference": round(
            statistics.fmean(r["vs_reference"]["verdict"] == "pass" for r in rows), 6
        ),
        "verdicts_vs_reference": {
            v: sum(r["vs_reference"]["verdict"] == v for r in rows) for v in VERDICTS
        },
        "relative_drop_vs_reference": t_interval(
            [x for r in rows if (x := r["vs_reference"].get("relative")) is not None]
        ),
    }


def t_interval(values: list[float], level: float = 0.95) -> dict[str, Any] | None:
    """Mean over seeds with its two-sided Student-t interval (None bounds for a single value,
    None for none)."""
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": round(mean, 6), "low": None, "high": None, "n": 1}
    half = (
        student_t.ppf((1 + level) / 2, len(values) - 1)
        * statistics.stdev(values)
        / len(values) ** 0.5
    )
    return {"mean": round(mean, 6), "low": round(mean - half, 6), "high": round(mean + half, 6),
            "n": len(values)}  # fmt: skip


def verdict_counts(counts: dict[str, int]) -> str:
    """'pass / undecided / fail' counts over seeds, plus those not learned where any."""
    text = f"{counts['pass']} / {counts['undecided']} / {counts['fail']}"
    return text + (f" ({counts['not learned']} not learned)" if counts["not learned"] else "")


def interval_cell(stats: dict[str, Any] | None) -> str:
    """'mean % [low, high]' of a relative drop over seeds."""
    if stats is None:
        return "—"
    if stats["low"] is None:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} [{100 * stats['low']:.1f}, {100 * stats['high']:.1f}]"


def aggregate(runs: list[Run]) -> dict[str, Any]:
    """The comparison: per-strategy statistics over seeds and pairwise paired tests."""
    by_strategy: dict[str, dict[int, Run]] = defaultdict(dict)
    for run in runs:
        by_strategy[run["params"]["strategy"]["name"]][run["params"]["seed"]] = run
    strategies: dict[str, Any] = {}
    for strategy, seeds in sorted(by_strategy.items()):
        times = [t for run in seeds.values() if (t := training_seconds(run)) is not None]
        strategies[strategy] = {
            "seeds": sorted(seeds),
            "tasks": {
                task: task_statistics(
                    [run["metrics"]["metrics/eval.json"]["tasks"][task] for run in seeds.values()]
                )
                for task in TASKS
            },
            "training_seconds": mean_std(times) if times else None,
        }
    pairs: dict[str, dict[str, Any]] = {task: {} for task in TASKS}
    for a, b in combinations(sorted(by_strategy), 2):
        common = sorted(set(by_strategy[a]) & set(by_strategy[b]))
        for task in TASKS if common else ():
            pairs[task][f"{a} - {b}"] = paired_test(
                final_metrics(by_strategy[a], task, common),
                final_metrics(by_strategy[b], task, common),
            )
    for tests in pairs.values():
        flag_within_noise(tests)
    return {
        "alpha": ALPHA,
        "tasks": {task: {"reference": reference_statistics(runs, task)} for task in TASKS},
        "strategies": strategies,
        "pairs": pairs,
    }


def reference_statistics(runs: list[Run], task: str) -> dict[str, Any]:
    """Mean ± std over seeds of `task`'s single-task reference (strategy-independent: one value
    per seed, the same in every run of that seed)."""
    per_seed = {
        run["params"]["seed"]: run["metrics"]["metrics/eval.json"]["tasks"][task]["vs_reference"][
            "value"
        ]
        for run in runs
    }
    return mean_std([per_seed[seed] for seed in sorted(per_seed)])


def seed_count(stats: dict[str, Any], seeds: int) -> str:
    """'n of `seeds` seeds' where `stats` is over fewer than `seeds` seeds, else ''."""
    return f"{stats['n']} of {seeds} seeds" if stats["n"] < seeds else ""


def cell(stats: dict[str, Any] | None, scale: float = 1.0, digits: int = 3, seeds: int = 0) -> str:
    """'mean ± std' of `stats` times `scale` (the mean alone for one seed, '—' for none),
    followed by its `seed_count` in parentheses where that is not empty."""
    if stats is None:
        return "—"
    text = f"{stats['mean'] * scale:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std'] * scale:.{digits}f}"
    count = seed_count(stats, seeds)
    return f"{text} ({count})" if count else text


def render(comparison: dict[str, Any], name: str, fixed: dict[str, Any]) -> str:
    """The markdown table of a comparison."""
    setting = ", ".join(f"{k}={v}" for k, v in fixed.items()) or "the committed params.yaml"
    lines = [
        f"# Strategy comparison `{name}`",
        "",
        f"*Generated by `seqmtl compare` from DVC experiments ({setting}; every other "
        "param as committed); do not edit by hand.*",
        "",
        "Per strategy and task, as mean ± sample std over seeds: the task's metric right after "
        "its own stage (its baseline), at the end of the sequence (final), and the drop between "
        "them; the share of seeds whose relative drop is within the threshold (against the "
        "baseline / against the single-task reference); the training time of stages 2 and 3. "
        "A relative drop is undefined for a seed whose task was not learned (its baseline near "
        "chance); its mean is then over the other seeds, and the cell says how many.",
        "",
        "Against the single-task reference, per seed the verdict of the drop's 95 % bootstrap "
        "interval over the val images (pass / undecided / fail), and the mean relative drop over "
        "seeds with its 95 % t-interval.",
        "",
        "| Strategy | Seeds | Task | After own stage | Final | Drop | Relative drop % | Pass rate "
        "| Pass rate vs ref. | Verdicts vs ref. | Drop vs ref. % | Stages 2+3 s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for strategy, stats in comparison["strategies"].items():
        seeds = ",".join(map(str, stats["seeds"]))
        for task, row in stats["tasks"].items():
            lines.append(
                f"| {strategy} | {seeds} | {task} ({row['metric']}) | {cell(row['baseline'])} "
                f"| {cell(row['final'])} | {cell(row['drop'])} "
                f"| {cell(row['relative_drop'], 100, 1, len(stats['seeds']))} "
                f"| {row['pass_rate']:.0%} | {row['pass_rate_vs_reference']:.0%} "
                f"| {verdict_counts(row['verdicts_vs_reference'])} "
                f"| {interval_cell(row['relative_drop_vs_reference'])} "
                f"| {cell(stats['training_seconds'], digits=0)} |"
            )
    lines += [
        "",
        "Single-task references (each task learned alone from the same initialisation with its "
        "stage's budget; for the first task, stage 1 itself), mean ± std over seeds:",
        "",
        "| Task | Reference | Seeds |",
        "| --- | ---: | ---: |",
        *(
            f"| {task} | {cell(entry['reference'])} | {entry['reference']['n']} |"
            for task, entry in comparison["tasks"].items()
        ),
        "",
        f"Paired differences of the final metric (row minus column strategy, same seeds), "
        "two-sided paired t-test over seeds (p), adjusted over the task's pairs by "
        f"Benjamini-Hochberg (q); *within noise* when q ≥ {comparison['alpha']}:",
        "",
        "| Task | Pair | Difference | p | q | Seeds | |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for task, pairs in comparison["pairs"].items():
        for pair, test in pairs.items():
            p, q = ("—" if v is None else f"{v:.3f}" for v in (test["p_value"], test["q_value"]))
            flag = "within noise" if test["within_noise"] else "**differs**"
            lines.append(
                f"| {task} | {pair} | {test['difference']:+.3f} | {p} | {q} | {test['seeds']} "
                f"| {flag} |"
            )
    return "\n".join(lines) + "\n"


def plot(comparison: dict[str, Any], path: Path) -> None:
    """Per strategy and task: the final metric (mean ± std over seeds) beside the task's
    single-task reference (a dashed line at its mean), and the relative drop against the
    reference with its 95 % t-interval over seeds, beside the 5 % line."""
    strategies = list(comparison["strategies"])
    fig = Figure(figsize=(max(8, 1.3 * len(strategies) + 3), 4))
    axes = fig.subplots(1, 2)
    width = 0.8 / len(TASKS)
    for k, task in enumerate(TASKS):
        rows = [comparison["strategies"][s]["tasks"][task] for s in strategies]
        x = [i + (k - (len(TASKS) - 1) / 2) * width for i in range(len(strategies))]
        label = f"{task} ({rows[0]['metric']})"
        final = [r["final"] for r in rows]
        bars = axes[0].bar(x, [f["mean"] for f in final], width, label=label, capsize=2,
                           yerr=[f["std"] or 0 for f in final])  # fmt: skip
        reference = comparison["tasks"][task]["reference"]["mean"]
        colour = bars.patches[0].get_facecolor()
        axes[0].hlines(reference, x[0] - width, x[-1] + width, colors=colour, linestyles="--",
                       linewidth=1)  # fmt: skip
        drops = [r["relative_drop_vs_reference"] for r in rows]
        means = [math.nan if d is None else 100 * d["mean"] for d in drops]
        below = [
            0 if d is None or d["low"] is None else 100 * (d["mean"] - d["low"]) for d in drops
        ]
        above = [
            0 if d is None or d["high"] is None else 100 * (d["high"] - d["mean"]) for d in drops
        ]
        axes[1].bar(x, means, width, yerr=[below, above], capsize=2, label=label)
    axes[0].set(ylabel="final metric (mean ± std); dashed: reference", ylim=(0, 1))
    axes[1].set(ylabel="drop vs reference, % (mean, 95 % t-interval)")
    axes[1].axhline(5, color="black", linestyle="--", linewidth=1, label="5 % threshold")
    for ax in axes:
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def parse_fixed(items: list[str]) -> dict[str, Any]:
    """`-S key=value` pairs (values parsed as YAML, as DVC does), but those of VARIED keys."""
    fixed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-S takes key=value, got {item!r}")
        fixed[key] = yaml.safe_load(value)
    return {key: value for key, value in fixed.items() if key not in VARIED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="comparison", help="names the outputs")
    parser.add_argument("-S", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                        help="params every run must have (as given to dvc exp run -S)")  # fmt: skip
    parser.add_argument("--rev", action="append", default=[],
                        help="a baseline commit of the experiments (repeatable; HEAD)")  # fmt: skip
    parser.add_argument("--input", type=Path, help="a saved `dvc exp show --json`")
    args = parser.parse_args()
    if args.input:
        exp_show = json.loads(args.input.read_text())
    else:
        exp_show = [
            entry
            for rev in args.rev or ["HEAD"]
            for entry in json.loads(dvc("exp", "show", "--json", "--rev", rev))
        ]
    fixed = parse_fixed(args.fixed)
    profile = [item for item in args.fixed if item.startswith("profile=")]

    @cache
    def base(strategy: str) -> dict[str, Any] | None:
        if strategy not in presets():
            return None
        try:
            return compose([*profile, f"strategy={strategy}"])
        except ValueError as error:
            raise SystemExit(str(error)) from None

    runs = select(read_runs(exp_show), base, fixed)
    if not runs:
        raise SystemExit("no finished run matches; see `dvc exp show` and the -S filters")
    comparison = aggregate(runs) | {"fixed": fixed}
    out = COMPARISONS / args.name
    write_json(out.with_suffix(".json"), comparison)
    with atomic_file(out.with_suffix(".md")) as handle:
        handle.write(render(comparison, args.name, fixed))
    plot(comparison, out.with_suffix(".png"))
    print(render(comparison, args.name, fixed))


if __name__ == "__main__":
    main()
