"""The models a suite compares: a run's tuned model beside its base model (the run folder names it), or one model.

A generator run's base is its base model as it was before training. A classifier has no head before training, so
its base is the run's trained head on the untuned body: the comparison then shows what tuning the body changed
(for a method that trains only the head, the two are the same model).
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.core.device import default_device
from tunelab.core.errors import DataError
from tunelab.eval.suites.subjects import Classifier, Generator
from tunelab.methods.trained import is_run, load_trained, read_run
from tunelab.models.generate import Precision
from tunelab.models.load import load_tokenizer
from tunelab.objectives.classify.heads import TaskModel, load_head_
from tunelab.objectives.classify.multi import MultiHeadModel
from tunelab.objectives.classify.predict import load_classifier


def load_subjects(
    spec: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    system_prompt: str | None = None,
    precision: Precision = "fp32",
) -> list[Generator | Classifier]:
    """[base, tuned] for a run folder, or the one model `spec` names."""
    device = default_device()
    gen = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "system_prompt": system_prompt,
        "precision": precision,
    }
    if not is_run(spec):
        model, tokenizer = load_trained(spec, dtype=torch.float32)
        return [Generator(spec, model.to(device), tokenizer, **gen)]
    run = read_run(spec)
    if run.objective == "classify":
        tuned, tokenizer = load_classifier(spec)
        if isinstance(tuned, MultiHeadModel):
            raise DataError(f"'{spec}' trained a head per task; the suites score runs with one classification head.")
        base = load_head_(run.load_base(), run.artifact)
        return [
            Classifier("base", _on(base, device), load_tokenizer(run.source), batch_size),
            Classifier("tuned", _on(tuned, device), tokenizer, batch_size),
        ]
    tuned, tokenizer = load_trained(spec, dtype=torch.float32)
    base = run.load_base()
    return [
        Generator("base", base.to(device), load_tokenizer(run.source), **gen),
        Generator("tuned", tuned.to(device), tokenizer, **gen),
    ]


def _on(model: TaskModel, device: torch.device) -> TaskModel:
    return model.to(device).eval()


def can_generate(model: nn.Module) -> bool:
    """Whether the model is a language model that can write text (an encoder body cannot paraphrase)."""
    check = getattr(model, "can_generate", None)
    return bool(check()) if callable(check) else False
