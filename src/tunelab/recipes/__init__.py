"""Multi-step workflows, each built on the one training run: `run` (one run: data, model, method, objective, fit,
save, evaluate, report), `stages` (a run in stages), `continual` (tasks in sequence with replay, EWC or an
adapter per task), `lr_find` (the learning-rate range test) and `runs` (run folders). The CLI picks the recipe."""
