"""Loss terms, one module each, named as the term (`strategy.terms.<name>`)."""
