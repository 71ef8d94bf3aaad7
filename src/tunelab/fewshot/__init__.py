"""Few-shot learning: in-context baselines and fine-tuning suited to a handful of labelled examples.

- `prompts.kshot_examples(eval_examples, pool, k, strategy=...)`: examples whose conversations start with k
  demonstrations (seeded random, or nearest by embedding); score them with `tunelab.eval.generation_metrics` like
  any validation set. `baseline.with_pool_shots` is what `tunelab eval --shots K --shot-pool FILE` runs.
- `context.ContextLimit`: the model's context less the answer tokens, and the overflow policy for longer prompts
  (`error`, or `drop` the farthest demonstrations and count them: `--shot-overflow`).
- `setfit`: SetFit for sentence encoders (contrastive pairs, then a logistic-regression head); train it with
  `objective: setfit` and load the result with `SetFitClassifier.load(folder)`.
"""
