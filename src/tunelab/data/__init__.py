"""Data: files in, canonical records out, tokenized with a loss mask; bad rows are rejected, never dropped."""
