"""Model merging with mergekit's recipe format and semantics (linear, task arithmetic, TIES, DARE) over run folders,
HF folders and LoRA adapters: `merge.merge_models(cfg, out)` runs a recipe (`tunelab merge-models`),
`config.load_merge_config` reads one, `tensors` holds the maths on one tensor."""
