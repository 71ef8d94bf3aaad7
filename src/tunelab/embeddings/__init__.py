"""Embedding fine-tuning of an encoder (e.g. the embedded all-MiniLM-L6-v2) and retrieval evaluation.

- `losses.info_nce` (multiple-negatives ranking, in-batch + hard negatives) and `losses.matryoshka`;
- `pooling.mean_pool`, `pooling.encode`;
- `retrieval.retrieval_metrics` (recall@k, MRR, nDCG@k) and `retrieval.evaluate_retrieval`;
- `train.contrastive_loss` (an objective: `loss(model, batch) -> LossParts`) and `train.train_embedder`.
"""
