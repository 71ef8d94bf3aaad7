"""Retrieval-augmented fine-tuning with a jointly trained retriever (REPLUG LSR): `objective` (the `rag` objective),
`data` (corpus and questions), `retriever` (a dense retriever and its index), `generator` (prompts with passages
and answer scores) and `losses` (REPLUG's KL)."""
