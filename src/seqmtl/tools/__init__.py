"""The command-line tools (`seqmtl TOOL`): compare, check, tolerance, bench, export; and deps,
which computes dvc.yaml's code deps."""
