"""Sequential multi-task learning with one unified head."""
