"""In-context (few-shot) baselines: the same validation rows and metrics as a fine-tuned run, with k solved
demonstrations in front of each question, so "fine-tune or just prompt?" is answered on the same numbers.

- `prompts.kshot_examples(eval_examples, pool, k, strategy=...)`: examples whose conversations start with k
  demonstrations (seeded random, or nearest by embedding); `baseline.with_pool_shots` is what
  `tunelab eval --shots K --shot-pool FILE` runs.
- `context.ContextLimit`: the model's context less the answer tokens, and the overflow policy for longer prompts
  (`error`, or `drop` the farthest demonstrations and count them: `--shot-overflow`)."""
