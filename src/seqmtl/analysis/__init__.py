"""Analysis of a finished sequence: evaluation and its bootstrap intervals, gradient estimators
and their figures, the report, and timing."""
