"""Embedding fine-tuning, warm-started from the embedded all-MiniLM-L6-v2, on a retrieval task.

Task: find, for a text that mentions a date in some form (the prompts of examples/dates: "Invoice #4537, issued
3/2/1980 (day first) ..."), the one document that states that date ("3 February 1980 (1980-02-03)") among all
documents of the held-out split. Training pairs come from the train split (no test date appears there); the
run is an ordinary `run_training` with `objective: contrastive` (in-batch negatives, Matryoshka dims 64 + 384).
Reports recall@k, MRR and nDCG@10 on held-out queries, before and after, at the full 384 dims and truncated to 64.
Writes benchmarks/results/techniques_embeddings.json and .md.

    .venv/bin/python benchmarks/techniques_embeddings.py                # 16 steps of 32 pairs
    .venv/bin/python benchmarks/techniques_embeddings.py --max-steps 2 --queries 20   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from techniques_common import DATES, RESULTS, device_note, train, write_jsonl

OUT = RESULTS / "techniques_embeddings.md"


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
    parser.add_argument("--max-steps", type=int, default=16, help="optimizer steps (one epoch would be 63)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (the in-batch negatives)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries evaluated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    from tunelab.models.load import load_model, load_tokenizer
    from tunelab.objectives.embed.retrieval import evaluate_retrieval

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    test = read_split("test")[: args.queries]
    queries = {f"q{i}": q for i, (q, _) in enumerate(test)}
    corpus = {doc: doc for doc in dict.fromkeys(d for _, d in test)}
    qrels = {f"q{i}": {d} for i, (_, d) in enumerate(test)}
    pairs = [{"anchor": q, "positive": d} for q, d in read_split("train")]
    model, tokenizer = load_model("minilm-l6"), load_tokenizer("minilm-l6")

    def measure() -> dict[str, dict[str, float]]:
        return {
            str(dims or 384): evaluate_retrieval(model, tokenizer, queries, corpus, qrels, ks=(1, 5, 10), dims=dims)
            for dims in (None, 64)
        }

    before = measure()
    with tempfile.TemporaryDirectory(prefix="tunelab-embed-demo-") as tmp:
        data = write_jsonl(Path(tmp) / "pairs.jsonl", pairs)
        result, train_s = train("embed", Path(tmp), [
            f"data.train={data}", "data.val_fraction=0", "data.max_length=96", "objective=contrastive",
            "objective.matryoshka_dims=[64, 384]", "method=full", "training.learning_rate=5e-5",
            f"training.batch_size={args.batch_size}", f"training.max_steps={args.max_steps}",
            f"training.num_threads={args.threads}", "training.warmup_ratio=0.1",
        ], model="minilm-l6")  # fmt: skip
        losses = [json.loads(x)["loss"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in x]  # fmt: skip
        model = result.model
    after = measure()
    device = device_note()
    lines = [
        "## Embedding fine-tuning: date mentions -> date documents",
        "",
        f"Command: `.venv/bin/python benchmarks/techniques_embeddings.py --max-steps {args.max_steps} "
        f"--batch-size {args.batch_size} --queries {args.queries} --threads {args.threads}`",
        "",
        f"all-MiniLM-L6-v2 (embedded), mean pooling. Queries: the first {len(queries)} held-out prompts of "
        f"examples/dates; corpus: the {len(corpus)} distinct documents of those dates. Trained with `tunelab train` "
        f"semantics (run_training, objective contrastive, method full) on {len(pairs)} train-split pairs, "
        f"{args.max_steps} steps of {args.batch_size} (in-batch negatives, scale 20, Matryoshka dims 64 + 384, "
        f"lr 5e-5), {train_s:.0f} s; logged loss {losses[0]:.3f} -> {losses[-1]:.3f}. Device: {device}; whole demo "
        f"{time.perf_counter() - started:.0f} s. Runs used 1 thread on a shared 2-core CPU, so wall times are "
        "upper bounds.",
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
    b, a = before["384"], after["384"]
    lines += ["", (
        f"Reading: at 384 dims recall@1 moved {b['recall@1']:.1%} -> {a['recall@1']:.1%} and MRR {b['mrr']:.3f} -> "
        f"{a['mrr']:.3f}; truncated to 64 dims, MRR {before['64']['mrr']:.3f} -> {after['64']['mrr']:.3f}."
    )]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "results": {"before": before, "after": after}, "train_s": train_s, "losses": losses,
               "total_s": time.perf_counter() - started, "device": device}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
