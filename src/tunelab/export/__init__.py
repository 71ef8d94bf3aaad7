"""Export trained results in formats other tools read."""
