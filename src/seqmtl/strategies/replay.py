"""replay: a seeded buffer of old-task samples mixed into every step; L = L_new + λ·Σ L_old."""

from __future__ import annotations

from seqmtl.strategies.base import Strategy, register


@register("replay")
class Replay(Strategy):
    """Fine-tuning with the replay component (`Strategy`): λ-weighted losses of `batch_size`
    buffered samples of every old task are added to each step.

    cfg: none of its own; the `replay_buffer` section's per_task (buffer size per old task),
    batch_size (replayed samples per old task and step) and weight (λ).
    """

    replays = True
