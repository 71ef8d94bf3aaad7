"""Zero-shot and k-shot in-context baselines, scored by the same metrics as fine-tuned models.

`prompts.kshot_examples(eval_examples, pool, k, strategy=...)` returns examples whose conversations start with k
demonstrations; pass them to `tunelab.eval.generation_metrics` like any validation set.
"""
