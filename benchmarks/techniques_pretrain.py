"""Continued pretraining demo: domain text, then SFT, in one `stages:` config on SmolLM2-135M-Instruct.

Domain corpus: plain text about dates written many ways, each line a record from examples/dates with its ISO
form ("Invoice #4537, issued 3/2/1980 (day first), total $169.68. As an ISO date: 1980-02-03."); the held-out
domain text comes from the test rows (no date shared with training). Stage 1 continues pretraining (objective
pretrain, packed, LoRA merged afterwards); stage 2 is SFT on the chat task. Reported: held-out domain perplexity
before and after stage 1, and held-out exact match after stage 2 next to SFT alone from the base model with the
same steps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_pretrain.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_pretrain.py --smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from techniques_common import (
    MODEL,
    answer,
    command,
    pct,
    prompt_and_reference,
    results_dir,
    rows,
    save,
    score,
    train,
    write_jsonl,
    write_section,
)


def domain_text(chat_rows: list[dict]) -> str:
    lines = []
    for row in chat_rows:
        prompt, reference = prompt_and_reference(row)
        context = prompt.split("\n\n", 1)[-1].replace("\n", " ")
        lines.append(f"{context} As an ISO date: {reference}.")
    return "\n".join(lines) + "\n"


def section(args: argparse.Namespace, res: dict) -> list[str]:
    before, after = res["domain_ppl_before"], res["domain_ppl_after"]
    staged, alone = res["pretrain_then_sft"], res["sft_only"]
    moved = "dropped" if after < before * 0.95 else "rose" if after > before * 1.05 else "barely moved"
    compare = (
        "matched" if abs(staged["exact_match"] - alone["exact_match"]) < 0.05
        else "beat" if staged["exact_match"] > alone["exact_match"] else "trailed"
    )  # fmt: skip
    return [
        "## Continued pretraining, then SFT, in one `stages:` config",
        "",
        f"Command: `{command('pretrain')}`",
        "",
        f"SmolLM2-135M-Instruct. Domain corpus: {args.rows} lines of plain text from training rows of examples/dates "
        '(the date as written, then "As an ISO date: YYYY-MM-DD."); held-out domain text: the same for the first '
        f"{args.eval} test rows (dates never seen in training). One config, two stages: stage 1 `objective: pretrain` "
        f"(packed, LoRA r 16, lr 5e-4, {args.pretrain_steps} steps of 8 x 256 tokens), merged; stage 2 `objective: "
        f"sft` (LoRA r 16, lr 1e-3, {args.steps} steps of 8) on {args.rows} other training rows as chat. For "
        f"comparison: the same SFT alone from the base model. Held-out: the first {args.eval} test prompts, greedy.",
        "",
        "| measure | base | after stage 1 (pretrain) | pretrain then SFT | SFT alone |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| held-out domain perplexity | {before:.2f} | {after:.2f} | | |",
        f"| held-out exact match | | | {pct(staged['exact_match'])} | {pct(alone['exact_match'])} |",
        f"| held-out ISO format | | | {pct(staged['iso_format'])} | {pct(alone['iso_format'])} |",
        f"| train s | | {res['staged_s']:.0f} (both stages) | | {res['sft_only_s']:.0f} |",
        "",
        f"Reading: domain perplexity {moved} ({before:.2f} → {after:.2f}) after continued pretraining, and the SFT "
        f"stage that followed still worked: it {compare} SFT alone on held-out exact match "
        f"({pct(staged['exact_match'])} vs {pct(alone['exact_match'])}).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=12)
    parser.add_argument("--steps", type=int, default=16, help="SFT steps (in the staged run and alone)")
    parser.add_argument("--rows", type=int, default=256, help="training rows of each corpus")
    parser.add_argument("--eval", type=int, default=40, help="held-out test prompts / domain lines")
    parser.add_argument("--smoke", action="store_true", help="1 step each, 16 rows; results to a temp folder")
    args = parser.parse_args()
    if args.smoke:
        args.pretrain_steps, args.steps, args.rows, args.eval = 1, 1, 16, 4
    started = time.perf_counter()

    from tunelab.config import load_config
    from tunelab.models.load import load_tokenizer
    from tunelab.recipes.run import run_training

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
        start = time.perf_counter()
        staged = run_training(load_config(None, [], base=raw))
        results["staged_s"] = time.perf_counter() - start
        stage1 = work / "staged" / "stage-1-pretrain"
        results["domain_ppl_before"] = json.loads((stage1 / "eval_baseline.json").read_text())["val_ppl"]
        results["domain_ppl_after"] = json.loads((stage1 / "eval.json").read_text())["val_ppl"]
        print("domain perplexity", results["domain_ppl_before"], "->", results["domain_ppl_after"], flush=True)
        results["pretrain_then_sft"] = score(answer(staged.model, tokenizer, list(prompts)), list(references))
        print("pretrain + sft", results["pretrain_then_sft"], flush=True)
        sft = [f"data.train={chat}", "data.val_fraction=0", "method=lora", "method.r=16", "method.alpha=32",
               "training.batch_size=8", f"training.max_steps={args.steps}", "training.warmup_ratio=0.1",
               "training.learning_rate=1e-3"]  # fmt: skip
        alone, results["sft_only_s"] = train("sft_only", work, sft)
        results["sft_only"] = score(answer(alone.model, tokenizer, list(prompts)), list(references))
        print("sft only", results["sft_only"], flush=True)
    out, wall = results_dir(args.smoke), time.perf_counter() - started
    save("pretrain", {"args": vars(args), "results": results, "wall_s": wall}, out)
    write_section("pretrain", [*section(args, results), f"Wall time of the whole demo: {wall:.0f} s."], out)


if __name__ == "__main__":
    main()
