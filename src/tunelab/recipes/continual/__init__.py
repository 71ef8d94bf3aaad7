"""Continual learning over tasks in sequence: `run` (the recipe), `resume` (resuming a stopped run without training
finished stages again), `tasks` (task rows, replay draws, scoring, the Fisher after a stage), `replay` (the
reservoir buffer) and `report` (average accuracy, backward transfer, forgetting). The EWC penalty itself is a
regularizer (`tunelab.regularizers.ewc`)."""
