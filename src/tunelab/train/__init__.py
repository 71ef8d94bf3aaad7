"""Training: one explicit loop (loop.py), and the pieces it is made of."""
