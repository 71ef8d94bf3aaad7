"""Continual learning without forgetting: EWC (Fisher + penalty), reservoir replay, and the accuracy-matrix report.

- `fisher.estimate_fisher(model, batches)` -> diagonal Fisher; `fisher.save_ewc` / `load_ewc` next to a run.
- `ewc.ewc_penalty(model, fisher, anchor, lam)`; `ewc.EWCRegularizer(model, state, lam).penalty()` for the loop.
- `replay.ReservoirBuffer` (Algorithm R) and `replay.mix_replay` (a data schedule).
- `report.continual_report(tasks, matrix)`: average accuracy, backward transfer, forgetting.
"""
