"""Inference ensembles: several models (or adapters on one base) answering as one.

- `combine.combine_logits` (average logits or probabilities, weighted) and `combine.majority_vote` (labels);
- `model.EnsembleModel`: a module whose `forward` returns combined logits and whose `generate` is greedy
  decoding with one KV cache per member, so `tunelab.eval.generation_metrics` scores an ensemble as a model;
- `weights.fit_weights`: per-model weights fitted on validation data (softmax-parametrised, minimum NLL).
"""
