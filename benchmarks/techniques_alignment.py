"""Preference alignment demo: DPO, ORPO, KTO, GRPO and PPO with a trained reward model move SmolLM2-135M-Instruct
toward answering with an ISO date only.

Preferred behaviour (the dates task, examples/dates): the answer is the date as YYYY-MM-DD and nothing else.
Reward of an answer = ISO format (1) + exact date (1). The base model answers in sentences (reward 0).
- DPO, ORPO, KTO: pairs from training prompts, chosen = the reference date, rejected = the base model's own greedy
  answer (KTO reads each pair as one desirable and one undesirable answer).
- Reward model: a scalar head on the LoRA body trained on the same pairs (Bradley-Terry); its accuracy on
  held-out pairs (the test prompts' reference vs the base model's answer) is reported.
- PPO: training prompts only, scored by that reward model (value head, GAE, clipped policy and value losses).
- GRPO: training prompts only; rewards from the config's Python reward functions (anchored ISO regex, exact
  match, an unanchored date regex and a length target as shaping), `--generations` samples per prompt.
Each trains LoRA (r 16) from the base model; the held-out test prompts are answered greedily before and after,
giving the mean reward, exact match, ISO-format rate and the win rate against the base model's answers, with 95%
intervals and paired tests against the base answers (per-example results are kept in the JSON).
`--only orpo kto reward ppo` runs some arms and keeps the others' results from the JSON already written.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_alignment.py      # defaults below
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_alignment.py --smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from techniques_common import (
    RESULTS,
    answer,
    command,
    interval_cell,
    mean_interval,
    paired_cell,
    pct,
    prompt_and_reference,
    rate_interval,
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


ARMS = ("dpo", "orpo", "kto", "grpo", "reward", "ppo")
"""The arms in table order; `reward` is the reward model PPO is trained against (it answers nothing)."""
PAIR_OBJECTIVES = {"dpo": ["objective=dpo", "objective.beta=0.1"], "orpo": ["objective=orpo", "objective.beta=0.1"],
                   "kto": ["objective=kto", "objective.beta=0.1"]}  # fmt: skip
LORA = ["method=lora", "method.r=16", "method.alpha=32", "data.val_fraction=0", "training.warmup_ratio=0.1",
        "training.learning_rate=5e-4"]  # fmt: skip


def evaluate(model, tokenizer, prompts: list[str], references: list[str], base: list[str] | None = None) -> dict:
    """Greedy held-out answers scored: rates, mean reward, win/loss rates against the base answers, and every
    example's reward and exact match (for intervals and paired tests)."""
    answers = answer(model, tokenizer, prompts)
    rewards = [reward(a, r) for a, r in zip(answers, references, strict=True)]
    exact = [float(a.strip() == r) for a, r in zip(answers, references, strict=True)]
    out = {**score(answers, references), "mean_reward": sum(rewards) / len(rewards), "samples": answers[:3],
           "per_example": {"reward": rewards, "exact": exact, "answers": answers}}  # fmt: skip
    if base is not None:
        before = [reward(a, r) for a, r in zip(base, references, strict=True)]
        out["win_rate"] = sum(a > b for a, b in zip(rewards, before, strict=True)) / len(rewards)
        out["loss_rate"] = sum(a < b for a, b in zip(rewards, before, strict=True)) / len(rewards)
    return out


def preference_pairs(prompts: list[tuple[str, str]], answers: list[str]) -> list[dict]:
    """Chosen = the reference date; rejected = what the base model answered (a sentence), or a sentence around the
    date when the base model happened to answer exactly."""
    return [
        {"prompt": p, "chosen": ref, "rejected": bad if bad.strip() not in ("", ref) else f"The date is {ref}."}
        for (p, ref), bad in zip(prompts, answers, strict=True)
    ]


def describe(args: argparse.Namespace) -> str:
    return (
        f"SmolLM2-135M-Instruct, LoRA r 16 from the base model for each method. DPO, ORPO and KTO (β 0.1 each, lr "
        f"5e-4): {args.steps} steps of 8 pairs from the first {args.pairs} training prompts, chosen = the reference "
        "date, rejected = the base model's own greedy answer (KTO reads each pair as one desirable and one "
        f"undesirable answer). GRPO: {args.grpo_steps} steps of {args.grpo_prompts} prompts x {args.generations} "
        f"samples (temperature {args.temperature}, at most {args.max_new_tokens} new tokens, β 0.04, lr "
        f"{args.grpo_lr:g}) from the same prompts, rewards from Python functions in the config (anchored ISO regex, "
        "exact match, unanchored date regex 0.5, length target 10 chars 0.5, minus "
        f"{args.truncated_penalty:g} for a sample cut off at the token limit). Reward model: a scalar head on LoRA, "
        f"{args.steps} steps of 8 of the same pairs (Bradley-Terry). PPO: {args.grpo_steps} steps of "
        f"{args.grpo_prompts * args.generations} prompts, one sample each (same temperature, token limit, β, lr and "
        "truncation penalty as GRPO), scored by that reward model only. Held-out: the first "
        f"{args.eval} test prompts (unseen dates), greedy. Reward of an answer: ISO format (1) + exact date (1). "
        "Win rate: share of prompts whose answer earns more than the base model's answer (loss rate: less). "
        "Intervals: 95% bootstrap; Δ reward: paired bootstrap against the base answers on the same prompts."
    )


def table_row(name: str, row: dict, base: dict, n: int) -> tuple[str, str]:
    """One table line and one sentence of the reading for an arm that answered."""
    train_s = f"{row['train_s']:.0f}" if row.get("train_s") else ""
    per, before = row.get("per_example"), base.get("per_example")
    if per:
        reward_cell = mean_interval(per["reward"], percent=False)
        exact_cell = mean_interval(per["exact"])
        iso_cell = interval_cell(rate_interval(row["iso_format"], n))
    else:  # measured before per-example results were kept: intervals from the counts, no paired test
        reward_cell = f"{row['mean_reward']:.2f}"
        exact_cell = interval_cell(rate_interval(row["exact_match"], n))
        iso_cell = interval_cell(rate_interval(row["iso_format"], n))
    delta, reading = "", ""
    if name != "base" and per and before:
        delta, significant = paired_cell(before["reward"], per["reward"], percent=False)
        rose = row["mean_reward"] > base["mean_reward"]
        verb = ("raised" if rose else "lowered") if significant else "did not measurably change"
        reading = (f"{name.upper()} {verb} the held-out mean reward ({base['mean_reward']:.2f} → "
                   f"{row['mean_reward']:.2f}, Δ {delta}).")  # fmt: skip
    elif name != "base":
        delta = "not kept (older run)"
        reading = (f"{name.upper()}: {base['mean_reward']:.2f} → {row['mean_reward']:.2f}; its per-example answers "
                   "were not kept, so no paired test (compare the intervals).")  # fmt: skip
    line = (f"| {name} | {reward_cell} | {delta} | {exact_cell} | {iso_cell} | {pct(row.get('win_rate'))} | "
            f"{pct(row.get('loss_rate'))} | {train_s} |")  # fmt: skip
    return line, reading


def section(args: argparse.Namespace, res: dict, cmd: str | None = None) -> list[str]:
    n = args.eval
    lines = [
        "## Preference alignment: DPO, ORPO, KTO, GRPO, PPO with a reward model",
        "",
        f"Command: `{cmd or command('alignment')}`",
        "",
        describe(args),
        "",
        "| model | mean reward (0-2) | Δ reward vs base (paired) | exact match | ISO format | win rate vs base | "
        "loss rate | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reading = []
    for name, row in res.items():
        if name == "reward":
            continue
        line, said = table_row(name, row, res["base"], n)
        lines.append(line)
        reading += [said] if said else []
    if "reward" in res:
        rm = res["reward"]
        lines += ["", f"Reward model: pair accuracy on the {rm['pairs']} held-out pairs (reference date vs the base "
                  f"model's answer) {interval_cell(rate_interval(rm['pair_accuracy'], rm['pairs']))}, trained in "
                  f"{rm['train_s']:.0f} s."]  # fmt: skip
    absent = [arm for arm in ARMS if arm not in res]
    if absent:
        lines += ["", f"Not measured in this run: {', '.join(absent)} (the demo was stopped before them; `--only "
                  f"{' '.join(absent)}` measures them and keeps the rows above)."]  # fmt: skip
    lines += ["", "First held-out answer of each: " + "; ".join(
        f"{k}: `{v['samples'][0]!r}`" for k, v in res.items() if "samples" in v)]  # fmt: skip
    if args.truncated_penalty:
        reading.append(
            "Without the truncation penalty (`--truncated-penalty 0`, numbers in techniques_alignment_penalty0.json) "
            "GRPO's answers came to start with the ISO date but ran on to the token limit, scoring 0: a sample cut off"
            " right after a date looked like a finished ISO answer and earned the full reward."
        )
    return [*lines, "", "Reading: " + " ".join(reading)]


def train_arms(args: argparse.Namespace, base_model, tokenizer, test: list[tuple[str, str]], base_answers: list[str],
               done) -> dict:  # fmt: skip
    """Train and evaluate each arm of `args.only` (all by default), calling `done(results so far)` after each (so
    an interrupted demo keeps what it measured); returns {arm: results}."""
    prompts, references = [p for p, _ in test], [r for _, r in test]
    train_rows = rows("train")[: args.pairs]
    wanted = set(args.only or ARMS) | ({"reward"} if "ppo" in (args.only or ARMS) else set())
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-align-") as tmp:
        work = Path(tmp)
        train_prompts = [prompt_and_reference(r) for r in train_rows]
        pairs = preference_pairs(train_prompts, answer(base_model, tokenizer, [p for p, _ in train_prompts]))
        pref = write_jsonl(work / "pref.jsonl", pairs)
        held_out = write_jsonl(work / "pref_test.jsonl", preference_pairs(test, base_answers))
        pair_cfg = [f"data.train={pref}", *LORA, "training.batch_size=8", f"training.max_steps={args.steps}"]
        chat = write_jsonl(work / "chat.jsonl", train_rows)
        rl = [f"data.train={chat}", *LORA, f"training.max_steps={args.grpo_steps}",
              f"training.learning_rate={args.grpo_lr}", f"objective.max_new_tokens={args.max_new_tokens}",
              f"objective.temperature={args.temperature}", "objective.beta=0.04",
              f"objective.truncated_penalty={args.truncated_penalty}"]  # fmt: skip
        for arm in [a for a in ARMS if a in wanted]:
            if arm in PAIR_OBJECTIVES:
                run, seconds = train(arm, work, [*pair_cfg, *PAIR_OBJECTIVES[arm]])
            elif arm == "grpo":
                run, seconds = train(arm, work, [*rl, f"training.batch_size={args.grpo_prompts}", "objective=grpo",
                                                 f"objective.rewards={GRPO_REWARDS}",
                                                 f"objective.num_generations={args.generations}"])  # fmt: skip
            elif arm == "reward":
                run, seconds = train(arm, work, [*pair_cfg, "objective=reward", f"data.validation={held_out}"])
                results[arm] = {"pair_accuracy": run.final["val_pair_acc"], "pairs": len(test), "train_s": seconds,
                                "run_dir": str(run.run_dir)}  # fmt: skip
                reward_run = run.run_dir
                print(arm, results[arm], flush=True)
                done(results)
                continue
            else:
                run, seconds = train(arm, work, [*rl, f"training.batch_size={args.grpo_prompts * args.generations}",
                                                 "objective=ppo", f"objective.reward_model={reward_run}"])  # fmt: skip
            results[arm] = {**evaluate(run.body, tokenizer, prompts, references, base_answers), "train_s": seconds}
            print(arm, {k: v for k, v in results[arm].items() if k != "per_example"}, flush=True)
            del run
            done(results)
    return results


def earlier_results(args: argparse.Namespace) -> dict:
    """With --only, the other arms' results from the JSON an earlier run wrote (their own settings)."""
    path = RESULTS / "techniques_alignment.json"
    if not args.only or args.smoke or not path.is_file():
        return {}
    return {k: v for k, v in json.loads(path.read_text())["results"].items() if k not in args.only and k != "base"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="DPO/ORPO/KTO/reward-model optimizer steps (8 pairs)")
    parser.add_argument("--grpo-steps", type=int, default=20, help="GRPO and PPO optimizer steps")
    parser.add_argument("--grpo-prompts", type=int, default=2, help="prompts per GRPO step (PPO: x generations)")
    parser.add_argument("--grpo-lr", type=float, default=1e-3, help="GRPO and PPO learning rate")
    parser.add_argument("--generations", type=int, default=4, help="GRPO samples per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="GRPO/PPO sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="longest GRPO/PPO sample (an ISO date is 11)")
    parser.add_argument(
        "--truncated-penalty", type=float, default=1.0, help="subtracted from a GRPO/PPO sample cut off at the limit"
    )
    parser.add_argument("--pairs", type=int, default=80, help="training pairs (and GRPO/PPO training prompts)")
    parser.add_argument("--eval", type=int, default=40, help="held-out test prompts answered")
    parser.add_argument("--only", nargs="*", choices=ARMS, help="run these arms; keep the others' earlier results")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 8 pairs, 4 prompts; results to a temp folder")
    parser.add_argument("--table", action="store_true", help="only rewrite the section from the saved JSON")
    args = parser.parse_args()
    if args.table:
        saved = json.loads((RESULTS / "techniques_alignment.json").read_text())
        vars(args).update({k: v for k, v in saved["args"].items() if k not in ("table", "only")})
        write_section("alignment", [*section(args, saved["results"], saved["command"]),
                                    f"Wall time of the last run of the demo: {saved['wall_s']:.0f} s."])  # fmt: skip
        return
    if args.smoke:
        args.steps, args.grpo_steps, args.pairs, args.eval = 2, 2, 8, 4
    started = time.perf_counter()

    from tunelab.models.load import load_model, load_tokenizer

    test = [prompt_and_reference(r) for r in rows("test")[: args.eval]]
    tokenizer, base_model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m")
    base = evaluate(base_model, tokenizer, [p for p, _ in test], [r for _, r in test])
    print("base", {k: v for k, v in base.items() if k != "per_example"}, flush=True)
    out = results_dir(args.smoke)
    earlier = earlier_results(args)

    def write(trained: dict) -> None:
        merged = {**earlier, **trained}
        results = {"base": base, **{arm: merged[arm] for arm in ARMS if arm in merged}}
        wall = time.perf_counter() - started
        save("alignment", {"args": vars(args), "results": results, "wall_s": wall}, out)
        write_section("alignment", [*section(args, results), f"Wall time of this run of the demo: {wall:.0f} s."], out)

    write(train_arms(args, base_model, tokenizer, test, base["per_example"]["answers"], write))


if __name__ == "__main__":
    main()
