"""Evaluation suites beyond the metrics: robustness to perturbed prompts and a counterfactual bias probe, each run
on a model or on a run's base and tuned models side by side (`tunelab eval RUN --suite robustness --suite bias`)."""
