"""The tasks: their registry (loss, metric, head channels and output), detection's FCOS parts,
and the metrics."""
