"""Classification with a task head on the (method-adapted) body: sequence classification, regression and token
classification (NER), one head or one head per task on a shared body.

- `objective`: the `classify` objective (data, setup, loss, scores) and `load_classifier` for a finished run;
- `heads` / `multi`: the head module(s), saved next to the method's result; `losses`, `data`, `metrics`, `config`;
- `tasks`: planning and scoring one head per task (`objective.task_heads`)."""
