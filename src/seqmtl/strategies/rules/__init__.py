"""Gradient rules, one module each, named as the rule (`strategy.rule.name`)."""
