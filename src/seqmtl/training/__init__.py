"""Training: the loop behind every training stage (train), its checkpoints, resume states,
data-parallel processes, per-epoch logs, and what every stage script shares (stage)."""
