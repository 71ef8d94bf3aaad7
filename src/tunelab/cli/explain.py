"""`tunelab explain MODEL --prompt ...`: token attributions of a generated answer (or of a classifier's label),
coloured in the terminal and written as an HTML heat map with the numbers beside it as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from tunelab.core.errors import ConfigError
from tunelab.eval.explain import Explanation, colour, explain_answer, explain_label, write_explanation
from tunelab.methods.trained import is_run, load_trained, read_run
from tunelab.objectives.classify.heads import TaskModel
from tunelab.objectives.classify.predict import load_classifier

console = Console()


def explain(args: argparse.Namespace) -> None:
    if args.steps < 2:
        raise ConfigError(f"--steps {args.steps}: integrated gradients needs at least 2 steps (50 is usual).")
    if is_run(args.model) and read_run(args.model).objective == "classify":
        classifier, tokenizer = load_classifier(args.model, dtype=torch.float32)
        if not isinstance(classifier, TaskModel):
            raise ConfigError(f"'{args.model}' has a head per task; tunelab explain attributes one head's label. "
                              "Explain a run with one head.")  # fmt: skip
        result = explain_label(classifier, tokenizer, args.prompt, args.method, target=args.target, steps=args.steps)
    else:
        model, tokenizer = load_trained(args.model, dtype=torch.float32)
        result = explain_answer(model, tokenizer, args.prompt, args.method, target=args.target,
                                per_token=args.per_token, steps=args.steps, system_prompt=args.system,
                                max_new_tokens=args.max_new_tokens)  # fmt: skip
    show(result)
    out = write_explanation(result, args.prompt, args.out or default_out(args.model, args.method))
    console.print(f"heat map: {out} (numbers: {out.with_suffix('.json')})")


def default_out(model: str, method: str) -> Path:
    """RUN/explain/<method>.html for a run folder, else explain-<method>.html here."""
    return Path(model) / "explain" / f"{method}.html" if is_run(model) else Path(f"explain-{method}.html")


def heat_text(tokens: list[str], scores: list[float], newline: str = "↵\n") -> Text:
    """The tokens on backgrounds coloured by their attribution (red supports, blue opposes)."""
    scale = max((abs(s) for s in scores), default=0.0)
    text = Text()
    for token, value in zip(tokens, scores, strict=True):
        text.append(token.replace("\n", newline), style=f"black on {colour(value, scale)}")
    return text


def top_tokens(result: Explanation, k: int = 5) -> str:
    """The k prompt or answer tokens with the largest attributions, for terminals without colour."""
    ranked = sorted((i for i, p in enumerate(result.parts) if p != "template"), key=lambda i: -result.scores[i])
    return ", ".join(f"{result.tokens[i]!r} {result.scores[i]:+.3g}" for i in ranked[:k])


def show(result: Explanation) -> None:
    what = "answer" if result.kind == "answer" else "label"
    console.print(Text.assemble((f"{result.method} attributions of the {what} ", "bold"), repr(result.target)))
    console.print(heat_text(result.tokens, result.scores))
    own = [i for i, p in enumerate(result.parts) if p != "template"]  # one line per answer token: no template
    for token, row in zip(result.target_tokens, result.per_target, strict=bool(result.per_target)):
        line = heat_text([result.tokens[i] for i in own], [row[i] for i in own], newline="↵")
        console.print(Text.assemble((f"{token!r:>12} ← ", "bold"), line))
    console.print(f"most supporting: {top_tokens(result)}")
    line = f"score {result.score:.4f}"
    if result.baseline_score is not None and result.delta is not None:
        line += (f", baseline {result.baseline_score:.4f}, attributions sum {sum(result.scores):.4f} "
                 f"(convergence delta {result.delta:.1e})")  # fmt: skip
    console.print(line)
