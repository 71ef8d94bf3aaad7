"""Evaluation: answer metrics, greedy and streamed generation, generation eval and the before/after table."""

from tunelab.eval.evaluate import generation_metrics, is_rate, metrics_table, write_predictions
from tunelab.eval.metrics import aggregate, bleu, exact_match, normalize_answer, rouge_l, token_f1
from tunelab.models.generate import generate_answers, stop_token_ids, stream_reply

__all__ = [
    "aggregate",
    "bleu",
    "exact_match",
    "generate_answers",
    "generation_metrics",
    "is_rate",
    "metrics_table",
    "normalize_answer",
    "rouge_l",
    "stop_token_ids",
    "stream_reply",
    "token_f1",
    "write_predictions",
]
