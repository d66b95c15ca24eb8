"""seqmtl export: it refuses a run whose evaluation is an earlier run's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from seqmtl.tools.export import stale

REPO = Path(__file__).resolve().parents[1]


def lock(reference: str, read_by_evaluate: str) -> dict:
    """A dvc.lock where reference2 wrote `reference` and evaluate read `read_by_evaluate`."""
    return {
        "stages": {
            "reference2": {"outs": [{"path": "metrics/reference_det.json", "md5": reference}]},
            "evaluate": {
                "deps": [
                    {"path": "metrics/reference_det.json", "md5": read_by_evaluate},
                    {"path": "stages/evaluate.py", "md5": "s"},
                ],
                "outs": [{"path": "metrics/eval.json", "md5": "e"}],
            },
            "report": {"deps": [{"path": "metrics/eval.json", "md5": "e"}]},
        }
    }


def test_a_stage_that_read_other_bytes_than_the_last_written_is_stale() -> None:
    assert stale(lock("a", "a")) == []
    # `dvc exp run reference2` alone: the reference is new, evaluate read the old one
    assert stale(lock("b", "a")) == ["evaluate"]


def test_the_committed_pipeline_is_not_stale() -> None:
    committed = subprocess.run(
        ["git", "show", "HEAD:dvc.lock"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert stale(yaml.safe_load(committed)) == []
