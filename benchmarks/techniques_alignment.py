"""Preference alignment demo: DPO and GRPO move SmolLM2-135M-Instruct toward answering with an ISO date only.

Preferred behaviour (the dates task, examples/dates): the answer is the date as YYYY-MM-DD and nothing else.
Reward of an answer = ISO format (1) + exact date (1). The base model answers in sentences (reward 0).
- DPO: pairs from training prompts, chosen = the reference date, rejected = the base model's own greedy answer.
- GRPO: training prompts only; rewards from the config's Python reward functions (anchored ISO regex, exact
  match, an unanchored date regex and a length target as shaping), 4 samples per prompt.
Both train LoRA (r 16) for the same number of steps; the held-out test prompts are answered greedily before and
after, giving the mean reward, exact match, ISO-format rate and the win rate against the base model's answers.

    .venv/bin/python benchmarks/techniques_alignment.py                 # defaults below
    .venv/bin/python benchmarks/techniques_alignment.py --steps 2 --eval 4 --pairs 8   # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from techniques_common import answer, prompt_and_reference, reward, rows, save, score, train, write_jsonl

GRPO_REWARDS = (
    "[{name: regex, pattern: '^\\d{4}-\\d{2}-\\d{2}$'}, {name: exact_match}, "
    "{name: regex, pattern: '\\d{4}-\\d{2}-\\d{2}', weight: 0.5}, {name: length, target: 10, weight: 0.5}]"
)


def evaluate(model, tokenizer, prompts: list[str], references: list[str], base: list[str] | None = None) -> dict:
    answers = answer(model, tokenizer, prompts)
    rewards = [reward(a, r) for a, r in zip(answers, references, strict=True)]
    out = {**score(answers, references), "mean_reward": sum(rewards) / len(rewards), "samples": answers[:3]}
    if base is not None:
        before = [reward(a, r) for a, r in zip(base, references, strict=True)]
        out["win_rate"] = sum(a > b for a, b in zip(rewards, before, strict=True)) / len(rewards)
        out["loss_rate"] = sum(a < b for a, b in zip(rewards, before, strict=True)) / len(rewards)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps of each method")
    parser.add_argument("--pairs", type=int, default=128, help="DPO training pairs (and GRPO training prompts)")
    parser.add_argument("--eval", type=int, default=40, help="held-out test prompts answered")
    args = parser.parse_args()

    from tunelab.models import load_model, load_tokenizer

    test = [prompt_and_reference(r) for r in rows("test")[: args.eval]]
    prompts, references = [p for p, _ in test], [r for _, r in test]
    train_rows = rows("train")[: args.pairs]
    tokenizer, base_model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m")
    base_answers = answer(base_model, tokenizer, prompts)
    results: dict = {"base": evaluate(base_model, tokenizer, prompts, references)}
    print("base", results["base"], flush=True)

    with tempfile.TemporaryDirectory(prefix="tunelab-align-") as tmp:
        work = Path(tmp)
        train_prompts = [prompt_and_reference(r) for r in train_rows]
        rejected = answer(base_model, tokenizer, [p for p, _ in train_prompts])
        # Rejected: what the base model itself answers (a sentence), or a sentence around the date if it was right.
        pairs = [
            {"prompt": p, "chosen": ref, "rejected": bad if bad.strip() not in ("", ref) else f"The date is {ref}."}
            for (p, ref), bad in zip(train_prompts, rejected, strict=True)
        ]
        pref = write_jsonl(work / "pref.jsonl", pairs)
        lora = ["method=lora", "method.r=16", "method.alpha=32", "data.val_fraction=0", "training.batch_size=8",
                f"training.max_steps={args.steps}", "training.warmup_ratio=0.1"]  # fmt: skip
        dpo, dpo_s = train("dpo", work, [f"data.train={pref}", *lora, "objective=dpo", "objective.beta=0.1",
                                         "training.learning_rate=5e-4"])  # fmt: skip
        results["dpo"] = {**evaluate(dpo.model, tokenizer, prompts, references, base_answers), "train_s": dpo_s}
        print("dpo", results["dpo"], flush=True)

        chat = write_jsonl(work / "chat.jsonl", train_rows)
        grpo, grpo_s = train("grpo", work, [
            f"data.train={chat}", *lora, "training.batch_size=4", "objective=grpo", f"objective.rewards={GRPO_REWARDS}",
            "objective.num_generations=4", "objective.max_new_tokens=16", "objective.beta=0.04",
            "training.learning_rate=5e-4",
        ])  # fmt: skip
        results["grpo"] = {**evaluate(grpo.model, tokenizer, prompts, references, base_answers), "train_s": grpo_s}
        print("grpo", results["grpo"], flush=True)

    save("alignment", {"args": vars(args), "results": results, "rejected_example": pairs[0]["rejected"]})


if __name__ == "__main__":
    main()
