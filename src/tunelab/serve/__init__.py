"""The OpenAI-compatible server: many small modules, each one job (protocol, engine and batching, sampling,
constraints, adapters, embeddings, metrics, errors, loading; the traffic log, feedback and the review page)."""
