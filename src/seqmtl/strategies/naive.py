"""naive: fine-tune on the new task only (the forgetting baseline)."""

from seqmtl.strategies.base import Strategy, register


@register("naive")
class Naive(Strategy):
    """Exactly the base behaviour: the new task's loss, nothing else (with replay: `replay`)."""

    replays = False
