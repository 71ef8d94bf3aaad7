"""Embedding fine-tuning, warm-started from the embedded all-MiniLM-L6-v2, on a retrieval task (issue #8 demo).

Task: find, for a text that mentions a date in some form (the prompts of examples/dates: "Invoice #4537, issued
3/2/1980 (day first) ..."), the one document that states that date ("3 February 1980 (1980-02-03)") among all
documents of the held-out split. Training pairs come from the train split (no test date appears there), with
in-batch negatives, optionally Matryoshka dims. Reports recall@k, MRR and nDCG@10 on held-out queries, before
and after, at the full 384 dims and truncated to 64. Writes benchmarks/results/techniques2_embeddings.md.

    .venv/bin/python benchmarks/techniques2_embeddings.py               # 1 epoch over 2,000 pairs
    .venv/bin/python benchmarks/techniques2_embeddings.py --max-steps 3 --queries 20   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATES = ROOT / "examples" / "dates"
OUT = ROOT / "benchmarks" / "results" / "techniques2_embeddings.md"


def document(iso: str) -> str:
    day = dt.date.fromisoformat(iso)
    return f"{day.day} {day.strftime('%B')} {day.year} ({iso})"


def read_split(name: str) -> list[tuple[str, str]]:
    """(query text, document) per row: the user's request and the canonical statement of its date."""
    rows = []
    for line in (DATES / f"{name}.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        rows.append((messages[0]["content"], document(messages[-1]["content"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--queries", type=int, default=200, help="held-out queries evaluated")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    from tunelab.data.records import Example
    from tunelab.embeddings.retrieval import evaluate_retrieval
    from tunelab.embeddings.train import train_embedder
    from tunelab.models import load_model, load_tokenizer

    torch.manual_seed(0)
    test = read_split("test")[: args.queries]
    queries = {f"q{i}": q for i, (q, _) in enumerate(test)}
    corpus = {doc: doc for doc in dict.fromkeys(d for _, d in test)}
    qrels = {f"q{i}": {d} for i, (_, d) in enumerate(test)}
    train = [Example(kind="pairs", anchor=q, positive=d) for q, d in read_split("train")]
    model, tokenizer = load_model("minilm-l6"), load_tokenizer("minilm-l6")

    def measure() -> dict[str, dict[str, float]]:
        return {
            str(dims or 384): evaluate_retrieval(model, tokenizer, queries, corpus, qrels, ks=(1, 5, 10), dims=dims)
            for dims in (None, 64)
        }

    before = measure()
    start = time.perf_counter()
    history = train_embedder(
        model, tokenizer, train, epochs=args.epochs, batch_size=args.batch_size, learning_rate=5e-5,
        matryoshka_dims=[64, 384], max_steps=args.max_steps, max_length=96,
    )  # fmt: skip
    train_s = time.perf_counter() - start
    after = measure()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    lines = [
        "# Embedding fine-tuning: date mentions -> date documents",
        "",
        f"all-MiniLM-L6-v2 (embedded), mean pooling. Queries: the first {len(queries)} held-out prompts of "
        f"examples/dates; corpus: the {len(corpus)} distinct documents of those dates. Trained on {len(train)} "
        f"train-split pairs, {len(history)} steps of {args.batch_size} (in-batch negatives, scale 20, Matryoshka "
        f"dims 64 + 384, lr 5e-5), {train_s:.0f} s. Loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}. "
        f"Device: {device}; torch {torch.__version__}.",
        "",
        "Command: `.venv/bin/python benchmarks/techniques2_embeddings.py"
        + (f" --max-steps {args.max_steps}" if args.max_steps else "")
        + (f" --queries {args.queries}" if args.queries != 200 else "")
        + "`",
        "",
        "| model | dims | recall@1 | recall@5 | recall@10 | MRR | nDCG@10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, table in (("MiniLM (base)", before), ("fine-tuned", after)):
        for dims, m in table.items():
            lines.append(
                f"| {name} | {dims} | {m['recall@1']:.1%} | {m['recall@5']:.1%} | {m['recall@10']:.1%} | "
                f"{m['mrr']:.3f} | {m['ndcg@10']:.3f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
