"""The model: backbones, the one-head model (model), and its inference copy (inference)."""
