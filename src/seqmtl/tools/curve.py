"""The detection reference's learning curve, from DVC experiments of the `reference2` stage.

    seqmtl curve EXP [EXP ...] --out results/real/det_learning_curve.json

Each experiment is one run of the detection reference (`sequence[1]` = det) at one seed and
one `subsample.n_train`, all with the same `subsample.val_seed` and `n_val` (so one val set) and
otherwise the same params. Writes, per training-set size, every seed's mAP@.5, AP small / medium
/ large and person AP@.5, with their mean and std over seeds, to the JSON and a figure beside it
(the same name, .png). Nothing is trained or evaluated again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from dvc.api import DVCFileSystem
from matplotlib.figure import Figure

from seqmtl.files import save_png, write_json
from seqmtl.tools.compare import mean_std

METRICS = ("map50", "map_small", "map_medium", "map_large", "ap50_person")


def read_run(rev: str, root: Path = Path(".")) -> dict[str, Any]:
    """One experiment's params, data counts and detection metrics."""
    fs = DVCFileSystem(str(root), rev=rev)
    if not fs.exists("metrics/reference_det.json"):
        raise FileNotFoundError(f"{rev!r}: no such experiment, or no metrics/reference_det.json")
    params = yaml.safe_load(fs.read_text("params.yaml"))
    data = json.loads(fs.read_text("metrics/data.json"))["det"]
    final = json.loads(fs.read_text("metrics/reference_det.json"))["final"]["det"]
    return {
        "experiment": rev,
        "params": params,
        "val": data["val"],
        "seed": params["seed"],
        "n_train": data["train"]["images"],
        "train_boxes": data["train"]["boxes"],
        **{metric: final[metric] for metric in METRICS},
    }


def same_setting(runs: list[dict[str, Any]]) -> None:
    """Raise ValueError unless the runs share one val set and every param but seed and
    subsample.n_train (data.mirror aside: a path of the machine that ran them)."""

    def setting(run: dict[str, Any]) -> dict[str, Any]:
        params = json.loads(json.dumps(run["params"]))
        params.pop("seed")
        params["subsample"].pop("n_train")
        params["data"].pop("mirror")
        return params

    first = runs[0]
    if first["params"]["subsample"]["val_seed"] is None:
        raise ValueError(
            f"{first['experiment']}: subsample.val_seed is null, so its val set depends on seed "
            "and n_train; rerun with -S subsample.val_seed=0"
        )
    for run in runs[1:]:
        if setting(run) != setting(first) or run["val"] != first["val"]:
            raise ValueError(
                f"{run['experiment']} and {first['experiment']} differ in more than seed and "
                "subsample.n_train, or in their val sets"
            )


def learning_curve(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The curve: the shared val set and recipe, every run, and per size the mean and std over
    seeds of each metric."""
    same_setting(runs)
    sizes = sorted({run["n_train"] for run in runs})
    rows = [{k: v for k, v in run.items() if k not in ("params", "val")} for run in runs]
    rows.sort(key=lambda r: (r["n_train"], r["seed"]))
    params = runs[0]["params"]
    return {
        "val": {**runs[0]["val"], "val_seed": params["subsample"]["val_seed"]},
        "recipe": {"model": params["model"], "det": params["tasks"]["det"]},
        "runs": rows,
        "by_size": {
            str(n): {
                metric: mean_std([r[metric] for r in rows if r["n_train"] == n])
                for metric in METRICS
            }
            for n in sizes
        },
    }


def plot(curve: dict[str, Any], path: Path) -> None:
    """mAP@.5, person AP@.5 and AP per object size against the training images: every seed's
    point and the mean over seeds."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    sizes = [int(n) for n in curve["by_size"]]
    panels = ((axes[0], ("map50", "ap50_person")), (axes[1], METRICS[1:4]))
    for ax, metrics in panels:
        for metric in metrics:
            means = [curve["by_size"][str(n)][metric]["mean"] for n in sizes]
            (line,) = ax.plot(sizes, means, marker="o", label=metric)
            points = [(r["n_train"], r[metric]) for r in curve["runs"]]
            ax.scatter(*zip(*points, strict=True), color=line.get_color(), alpha=0.4, s=12)
        ax.set(xlabel="training images", xticks=sizes, ylim=(0, None))
        ax.legend(fontsize=8)
    axes[0].set(ylabel=f"AP@.5 on {curve['val']['images']} val images (mean; dots: seeds)")
    axes[1].set(ylabel="COCO AP@[.5:.95] by object size")
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", help="DVC experiment names or git revisions")
    parser.add_argument("--out", type=Path, required=True, help="the JSON; the figure beside it")
    args = parser.parse_args()
    try:
        curve = learning_curve([read_run(rev) for rev in args.experiments])
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"curve: {error}") from None
    write_json(args.out, curve)
    plot(curve, args.out.with_suffix(".png"))
    print(args.out)


if __name__ == "__main__":
    main()
