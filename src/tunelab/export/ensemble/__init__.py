"""Ensembles of trained models: several runs (or adapters on one base) answering as one model.

- `combine.combine_logits` (average logits or probabilities, weighted) and `combine.majority_vote` (labels);
- `model.EnsembleModel`: a module whose `forward` returns combined logits and whose `generate` is greedy
  decoding with one KV cache per member, so `tunelab.eval.evaluate.generation_metrics` scores an ensemble as a
  model (`tunelab eval RUN_A RUN_B --ensemble ...`);
- `weights.fit_weights`: per-model weights fitted on validation data (softmax-parametrised, minimum NLL)."""
