"""Model merging: linear, task arithmetic, TIES and DARE on full models and LoRA adapters, with mergekit's
parameter names and semantics.

- `tunelab.merging.merge.merge_models(cfg, out)`: run a recipe (`tunelab merge-models`).
- `tunelab.merging.config.load_merge_config(path)` / `parse_merge_config(dict)`: a recipe.
- `tunelab.merging.tensors.merge_deltas` / `linear_merge`: the maths on one tensor.

Empty on purpose: `tunelab --help` imports the CLI module here, which must not import torch.
"""
