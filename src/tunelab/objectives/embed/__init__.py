"""Embedding models: `contrastive` (InfoNCE with in-batch and hard negatives, Matryoshka) and `setfit` (few-shot
classification: contrastive pairs on a sentence encoder, then a logistic-regression head, `setfit_head`), with
`losses` and `retrieval` (recall@k, MRR, nDCG@k and evaluating an encoder on a corpus)."""
