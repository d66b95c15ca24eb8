"""Data: the datasets each task reads (datasets), and what makes them: download, subsample, and
the generated stand-in for the offline default (synthetic)."""
