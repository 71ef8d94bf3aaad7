"""Continued pretraining demo: domain text, then SFT, in one `stages:` config on SmolLM2-135M-Instruct.

Domain corpus: plain text about dates written many ways, each line a record from examples/dates with its ISO
form ("Invoice #4537, issued 3/2/1980 (day first), total $169.68. As an ISO date: 1980-02-03."); the held-out
domain text comes from the test rows (no date shared with training). Stage 1 continues pretraining (objective
pretrain, packed, LoRA merged afterwards); stage 2 is SFT on the chat task. Reported: held-out domain perplexity
before and after stage 1, and held-out exact match after stage 2 next to SFT alone from the base model with the
same steps.

    .venv/bin/python benchmarks/techniques_pretrain.py
    .venv/bin/python benchmarks/techniques_pretrain.py --pretrain-steps 1 --steps 1 --eval 4 --rows 16   # smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from techniques_common import MODEL, answer, prompt_and_reference, rows, save, score, train, write_jsonl


def domain_text(chat_rows: list[dict]) -> str:
    lines = []
    for row in chat_rows:
        prompt, reference = prompt_and_reference(row)
        context = prompt.split("\n\n", 1)[-1].replace("\n", " ")
        lines.append(f"{context} As an ISO date: {reference}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=24)
    parser.add_argument("--steps", type=int, default=16, help="SFT steps (in the staged run and alone)")
    parser.add_argument("--rows", type=int, default=384, help="training rows of each corpus")
    parser.add_argument("--eval", type=int, default=40, help="held-out test prompts / domain lines")
    args = parser.parse_args()

    from tunelab.config import load_config
    from tunelab.models import load_tokenizer
    from tunelab.train.run import run_training

    train_rows, test_rows = rows("train"), rows("test")[: args.eval]
    prompts, references = zip(*(prompt_and_reference(r) for r in test_rows), strict=True)
    tokenizer = load_tokenizer(MODEL)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-pretrain-") as tmp:
        work = Path(tmp)
        corpus = work / "domain.txt"
        corpus.write_text(domain_text(train_rows[-args.rows :]))  # other rows than the SFT ones
        heldout = work / "heldout.txt"
        heldout.write_text(domain_text(test_rows))
        chat = write_jsonl(work / "chat.jsonl", train_rows[: args.rows])
        lora = {"name": "lora", "r": 16, "alpha": 32}
        raw = {
            "model": {"source": MODEL},
            "data": {"train": [str(chat)], "val_fraction": 0, "max_length": 256},
            "training": {"batch_size": 8, "log_every": 1, "warmup_ratio": 0.1, "learning_rate": 1e-3},
            "eval": {"generate": False},
            "output": {"dir": str(work), "name": "staged", "overwrite": True},
            "stages": [
                {"objective": "pretrain", "method": lora,
                 "data": {"train": [str(corpus)], "validation": [str(heldout)]},
                 "training": {"max_steps": args.pretrain_steps, "learning_rate": 5e-4}},
                {"objective": "sft", "method": lora, "training": {"max_steps": args.steps}},
            ],
        }  # fmt: skip
        staged = run_training(load_config(None, [], base=raw))
        stage1 = work / "staged" / "stage-1-pretrain"
        results["domain_ppl_before"] = json.loads((stage1 / "eval_baseline.json").read_text())["val_ppl"]
        results["domain_ppl_after"] = json.loads((stage1 / "eval.json").read_text())["val_ppl"]
        print("domain perplexity", results["domain_ppl_before"], "->", results["domain_ppl_after"], flush=True)
        results["pretrain_then_sft"] = score(answer(staged.model, tokenizer, list(prompts)), list(references))
        print("pretrain + sft", results["pretrain_then_sft"], flush=True)
        alone, _ = train("sft_only", work, [f"data.train={chat}", "data.val_fraction=0", "method=lora",
                                            "method.r=16", "method.alpha=32", "training.batch_size=8",
                                            f"training.max_steps={args.steps}", "training.warmup_ratio=0.1",
                                            "training.learning_rate=1e-3"])  # fmt: skip
        results["sft_only"] = score(answer(alone.model, tokenizer, list(prompts)), list(references))
        print("sft only", results["sft_only"], flush=True)
    save("pretrain", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
