"""Embedding fine-tuning of an encoder (e.g. the embedded all-MiniLM-L6-v2) and retrieval evaluation.

- `losses.info_nce` (multiple-negatives ranking, in-batch + hard negatives) and `losses.matryoshka`;
- `pooling.mean_pool`, `pooling.encode`;
- `retrieval.retrieval_metrics` (recall@k, MRR, nDCG@k) and `retrieval.evaluate_retrieval`;
- `train.train_embedder` (in memory); run folders use `objective: contrastive` (tunelab.objectives.contrastive).
"""
