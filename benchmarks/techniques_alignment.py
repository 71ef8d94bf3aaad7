"""Preference alignment demo: DPO and GRPO move SmolLM2-135M-Instruct toward answering with an ISO date only.

Preferred behaviour (the dates task, examples/dates): the answer is the date as YYYY-MM-DD and nothing else.
Reward of an answer = ISO format (1) + exact date (1). The base model answers in sentences (reward 0).
- DPO: pairs from training prompts, chosen = the reference date, rejected = the base model's own greedy answer.
- GRPO: training prompts only; rewards from the config's Python reward functions (anchored ISO regex, exact
  match, an unanchored date regex and a length target as shaping), `--generations` samples per prompt.
Both train LoRA (r 16) from the base model; the held-out test prompts are answered greedily before and after,
giving the mean reward, exact match, ISO-format rate and the win rate against the base model's answers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_alignment.py      # defaults below
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_alignment.py --smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from techniques_common import (
    answer,
    command,
    pct,
    prompt_and_reference,
    results_dir,
    reward,
    rows,
    save,
    score,
    train,
    write_jsonl,
    write_section,
)

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


def section(args: argparse.Namespace, res: dict) -> list[str]:
    lines = [
        "## Preference alignment: DPO and GRPO",
        "",
        f"Command: `{command('alignment')}`",
        "",
        f"SmolLM2-135M-Instruct, LoRA r 16 from the base model for each method. DPO: {args.steps} steps of 8 pairs "
        f"(β 0.1, lr 5e-4) from the first {args.pairs} training prompts, chosen = the reference date, rejected = the "
        f"base model's own greedy answer. GRPO: {args.grpo_steps} steps of {args.grpo_prompts} prompts x "
        f"{args.generations} samples (temperature {args.temperature}, at most {args.max_new_tokens} new tokens, β 0.04,"
        f" lr {args.grpo_lr:g}; a higher lr than DPO's as its signal per step is weaker) from the same "
        "prompts, rewards from Python functions in the config (anchored ISO regex, exact match, unanchored date regex "
        f"0.5, length target 10 chars 0.5, minus {args.truncated_penalty:g} for a sample cut off at the token limit); "
        "no reward model and no chosen answers. Held-out: the first "
        f"{args.eval} test prompts (unseen dates), greedy. Reward of an answer: ISO format (1) + exact date (1). "
        "Win rate: share of prompts whose answer earns more than the base model's answer (loss rate: less).",
        "",
        "| model | mean reward (0-2) | exact match | ISO format | win rate vs base | loss rate | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in res.items():
        train_s = f"{row['train_s']:.0f}" if row.get("train_s") else ""
        lines.append(
            f"| {name} | {row['mean_reward']:.2f} | {pct(row['exact_match'])} | {pct(row['iso_format'])} | "
            f"{pct(row.get('win_rate'))} | {pct(row.get('loss_rate'))} | {train_s} |"
        )
    lines += ["", "First held-out answer of each: " + "; ".join(f"{k}: `{v['samples'][0]!r}`" for k, v in res.items())]
    base = res["base"]["mean_reward"]
    reading = []
    for name in ("dpo", "grpo"):
        delta = res[name]["mean_reward"] - base
        verb = "raised" if delta > 0.05 else "lowered" if delta < -0.05 else "did not measurably change"
        reading.append(
            f"{name.upper()} {verb} the held-out mean reward ({base:.2f} → {res[name]['mean_reward']:.2f}; wins "
            f"{pct(res[name]['win_rate'])}, losses {pct(res[name]['loss_rate'])} against the base answers)."
        )
    if args.truncated_penalty:
        reading.append(
            "Without the truncation penalty (`--truncated-penalty 0`, numbers in techniques_alignment_penalty0.json) "
            "GRPO's answers came to start with the ISO date but ran on to the token limit, scoring 0: a sample cut off"
            " right after a date looked like a finished ISO answer and earned the full reward."
        )
    return [*lines, "", "Reading: " + " ".join(reading)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="DPO optimizer steps (8 pairs each)")
    parser.add_argument("--grpo-steps", type=int, default=20, help="GRPO optimizer steps")
    parser.add_argument("--grpo-prompts", type=int, default=2, help="prompts per GRPO step")
    parser.add_argument("--grpo-lr", type=float, default=1e-3, help="GRPO learning rate")
    parser.add_argument("--generations", type=int, default=4, help="GRPO samples per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="longest GRPO sample (an ISO date is 11)")
    parser.add_argument(
        "--truncated-penalty", type=float, default=1.0, help="subtracted from a GRPO sample cut off at the limit"
    )
    parser.add_argument("--pairs", type=int, default=80, help="DPO training pairs (and GRPO training prompts)")
    parser.add_argument("--eval", type=int, default=40, help="held-out test prompts answered")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 8 pairs, 4 prompts; results to a temp folder")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.grpo_steps, args.pairs, args.eval = 2, 2, 8, 4
    started = time.perf_counter()

    from tunelab.models.load import load_model, load_tokenizer

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
        lora = ["method=lora", "method.r=16", "method.alpha=32", "data.val_fraction=0", "training.warmup_ratio=0.1",
                "training.learning_rate=5e-4"]  # fmt: skip
        dpo_cfg = [f"data.train={pref}", *lora, "training.batch_size=8", f"training.max_steps={args.steps}"]
        dpo, dpo_s = train("dpo", work, [*dpo_cfg, "objective=dpo", "objective.beta=0.1"])
        results["dpo"] = {**evaluate(dpo.model, tokenizer, prompts, references, base_answers), "train_s": dpo_s}
        print("dpo", results["dpo"], flush=True)
        del dpo

        chat = write_jsonl(work / "chat.jsonl", train_rows)
        grpo, grpo_s = train("grpo", work, [
            f"data.train={chat}", *lora, f"training.batch_size={args.grpo_prompts}",
            f"training.max_steps={args.grpo_steps}", f"training.learning_rate={args.grpo_lr}",
            "objective=grpo", f"objective.rewards={GRPO_REWARDS}", f"objective.num_generations={args.generations}",
            f"objective.max_new_tokens={args.max_new_tokens}", f"objective.temperature={args.temperature}",
            "objective.beta=0.04", f"objective.truncated_penalty={args.truncated_penalty}",
        ])  # fmt: skip
        results["grpo"] = {**evaluate(grpo.model, tokenizer, prompts, references, base_answers), "train_s": grpo_s}
        print("grpo", results["grpo"], flush=True)

    out = results_dir(args.smoke)
    wall = time.perf_counter() - started
    save("alignment", {"args": vars(args), "results": results, "rejected_example": pairs[0]["rejected"],
                       "wall_s": wall}, out)  # fmt: skip
    write_section("alignment", [*section(args, results), f"Wall time of the whole demo: {wall:.0f} s."], out)


if __name__ == "__main__":
    main()
