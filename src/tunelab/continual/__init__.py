"""Continual learning without forgetting: EWC (Fisher + penalty), reservoir replay, and the accuracy-matrix report.

- `fisher.estimate_fisher(model, batches)` -> diagonal Fisher of the effective weights (`weights.ewc_weights`:
  LoRA layers count as W0 + ΔW, so EWC survives merging an adapter between stages); `fisher.save_ewc` / `load_ewc`.
- `ewc.ewc_penalty(model, fisher, anchor, lam)`; `ewc.EWCRegularizer(model, state, lam).penalty()` for the loop.
- `replay.ReservoirBuffer` (Algorithm R) and `replay.mix_replay` (a data schedule).
- `report.continual_report(tasks, matrix)`: average accuracy, backward transfer, forgetting.
- `config.ContinualSection` (the `continual:` section) and `run.run_continual`, which `tunelab train` calls for it:
  tasks in sequence (stages, or successive runs), replay / EWC / an adapter per task, continual.json and .md.
- `resume`: the run folder, and resuming a stopped run (`tunelab train --resume`) without training finished stages
  again; a changed task list is refused.
"""
