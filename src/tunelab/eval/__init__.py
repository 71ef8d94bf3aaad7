"""Evaluation: answer metrics, greedy and streamed generation, generation eval, intervals and paired tests, and the
metrics table."""

from tunelab.eval.compare import Comparison, summarize
from tunelab.eval.evaluate import answer_scores, generation_metrics, write_predictions
from tunelab.eval.metrics import aggregate, bleu, chrf, exact_match, normalize_answer, rouge_l, rouge_scores, token_f1
from tunelab.eval.table import comparison_table, is_rate, metrics_table
from tunelab.models.generate import generate_answers, stop_token_ids, stream_reply

__all__ = [
    "Comparison",
    "aggregate",
    "answer_scores",
    "bleu",
    "chrf",
    "comparison_table",
    "exact_match",
    "generate_answers",
    "generation_metrics",
    "is_rate",
    "metrics_table",
    "normalize_answer",
    "rouge_l",
    "rouge_scores",
    "stop_token_ids",
    "stream_reply",
    "summarize",
    "token_f1",
    "write_predictions",
]
