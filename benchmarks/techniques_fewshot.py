"""Few-shot: accuracy vs k for in-context prompting (random vs similar shots) and for fine-tuning (LoRA on SmolLM2,
SetFit on MiniLM), on one held-out set with one metric.

Task: the topic (sports, food or weather) of short sentences, generated here from a fixed seed; held-out sentences
use subject/predicate combinations that no training sentence uses. k counts examples per class. Prompting shows
SmolLM2-135M-Instruct k x 3 demonstrations (inline "Input:/Output:" blocks) drawn from the training pool, at
random or the nearest by MiniLM embedding; fine-tuning trains on the first k per class of the same pool. A
prediction is right when its first word is the label. Writes benchmarks/results/techniques_fewshot.json and .md.

    .venv/bin/python benchmarks/techniques_fewshot.py
    .venv/bin/python benchmarks/techniques_fewshot.py --test 12 --prompt-eval 6 --prompt-ks 0 1 --tune-ks 2 \\
        --lora-steps 2 --setfit-pairs 1      # smoke run
    .venv/bin/python benchmarks/techniques_fewshot.py --prompt-only --prompt-ks 8 16 32 --prompt-eval 24
        # more k for the prompting arm only, merged into the saved json (fine-tuning rows kept)

Every prompt is measured against SmolLM2's context (8192 positions less the answer tokens) under the `drop`
policy of `tunelab.fewshot.context`: a prompt that did not fit would lose its farthest demonstrations, and the
table reports how many prompts did.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from techniques_common import RESULTS, device_note, train, write_jsonl

LABELS = ["sports", "food", "weather"]
INSTRUCTION = "Classify the topic of the sentence as sports, food or weather. Answer with the topic only."
SUBJECTS = {
    "sports": ["The striker", "Our goalkeeper", "The home team", "The tennis champion", "The marathon runner",
               "The young cyclist", "The rugby captain", "The swimming coach", "The visiting side", "The boxer"],
    "food": ["The soup", "Grandma's apple pie", "The new bakery", "This curry", "The fresh pasta", "The street vendor",
             "Our chef", "The cheese platter", "The breakfast menu", "The lemon cake"],
    "weather": ["The storm", "A cold front", "The morning fog", "Heavy rain", "The heatwave", "A light breeze",
                "The forecast", "Thick clouds", "The first snow", "A thunderstorm"],
}  # fmt: skip
PREDICATES = {
    "sports": ["scored twice in the second half", "won the final on penalties", "lost the deciding set",
               "broke the course record", "trained hard before the season", "was cheered by the fans",
               "missed an easy goal", "signed a new contract"],
    "food": ["tasted of garlic and thyme", "was served with warm bread", "needed a little more salt",
             "sold out before noon", "was baked this morning", "smelled of cinnamon", "came with a spicy sauce",
             "was too sweet for me"],
    "weather": ["is expected to reach the coast tonight", "brought temperatures below zero",
                "cleared up by the afternoon", "flooded the low streets", "kept everyone indoors",
                "will bring showers tomorrow", "cooled the city after a hot day", "delayed flights at the airport"],
}  # fmt: skip
MAX_NEW_TOKENS = 3
OPENERS = ["", "Yesterday, ", "I heard that ", "According to the news, ", "As usual, "]


def sentence(opener: str, subject: str, predicate: str) -> str:
    return f"{opener}{subject[0].lower() + subject[1:] if opener else subject} {predicate}."


def make_task(seed: int = 0, pool_per_class: int = 40, test: int = 200) -> tuple[list[dict], list[dict]]:
    """(pool, test) rows {"text", "label"}; a test sentence's subject/predicate pair never occurs in the pool."""
    rng = random.Random(seed)
    pool, held = [], []
    for label in LABELS:
        combos = [(s, p) for s in SUBJECTS[label] for p in PREDICATES[label]]
        rng.shuffle(combos)
        cut = len(combos) // 2
        pool += [
            {"text": sentence(rng.choice(OPENERS), s, p), "label": label} for s, p in combos[:cut][:pool_per_class]
        ]
        held += [{"text": sentence(o, s, p), "label": label} for s, p in combos[cut:] for o in OPENERS]
    rng.shuffle(pool)
    rng.shuffle(held)
    return pool, held[:test]


def first_k(pool: list[dict], k: int) -> list[dict]:
    """The first k rows of each label, in pool order (the same rows for every method at this k)."""
    seen: dict[str, int] = {}
    out = []
    for row in pool:
        if seen.get(row["label"], 0) < k:
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            out.append(row)
    return out


def chat(row: dict):
    from tunelab.core.types import Message
    from tunelab.data.records import Example

    return Example(messages=[Message("user", row["text"]), Message("assistant", row["label"])], origin=row["text"])


def zero_shot_rows(rows: list[dict]) -> list[dict]:
    """Chat rows whose user turn is the zero-shot prompt (the format LoRA is fine-tuned on)."""
    from tunelab.eval.fewshot.prompts import kshot_examples

    exs = kshot_examples([chat(r) for r in rows], [], 0, layout="inline", instruction=INSTRUCTION)
    return [{"messages": [{"role": m.role, "content": m.content} for m in ex.messages]} for ex in exs]


def accuracy(predictions: list[str], rows: list[dict]) -> float:
    def first_word(text: str) -> str:
        words = text.strip().lower().split()
        return words[0].strip(".,:;!\"'") if words else ""

    return sum(first_word(p) == r["label"] for p, r in zip(predictions, rows, strict=True)) / max(len(rows), 1)


def generate(model, tokenizer, examples, batch_size: int) -> list[str]:
    from tunelab.eval.evaluate import generation_metrics

    _, rows = generation_metrics(model, tokenizer, examples, max_examples=None, max_new_tokens=MAX_NEW_TOKENS,
                                 batch_size=batch_size, precision="bf16", show_progress=False)  # fmt: skip
    return [r["prediction"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=200, help="held-out sentences (fine-tuned models)")
    parser.add_argument("--prompt-eval", type=int, default=60, help="held-out sentences scored by prompting")
    parser.add_argument("--prompt-ks", type=int, nargs="*", default=None,
                        help="shots per class, prompting (default 0 1 2 4; none with --prompt-only)")  # fmt: skip
    parser.add_argument("--tune-ks", type=int, nargs="+", default=[8, 16, 32], help="examples per class, fine-tuning")
    parser.add_argument("--lora-steps", type=int, default=16, help="LoRA steps of 8 rows")
    parser.add_argument("--setfit-pairs", type=int, default=5, help="SetFit pair rounds per text")
    parser.add_argument("--prompt-only", action="store_true",
                        help="run only the prompting arm for --prompt-ks and merge it into the saved json (the "
                        "fine-tuning rows and the other k are kept)")  # fmt: skip
    parser.add_argument("--peek", type=int, default=0,
                        help="also answer the first N held-out sentences with random shots at every prompting k "
                        "without sample answers yet, and show what the model says")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.prompt_ks is None:
        args.prompt_ks = [] if args.prompt_only else [0, 1, 2, 4]

    import torch

    torch.set_num_threads(args.threads)
    from tunelab.eval.fewshot.baseline import load_embedder
    from tunelab.models.load import load_model, load_tokenizer

    started = time.perf_counter()
    out = RESULTS / "techniques_fewshot.json"
    if args.prompt_only and not out.is_file():
        raise SystemExit(f"--prompt-only merges into {out}, which does not exist: run the whole demo first.")
    saved = json.loads(out.read_text()) if args.prompt_only else None
    pool, test = make_task(test=saved["args"]["test"] if saved else args.test)
    results = saved["results"] if saved else {"prompt_random": {}, "prompt_similar": {}, "lora": {}, "setfit": {}}
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    embed = load_embedder("minilm-l6")
    prompting(args, results, model, tokenizer, embed, pool, test)
    if saved:  # the k measured by earlier runs get their prompt lengths (tokenizing only, no generation)
        for k in sorted({int(k) for k in results["prompt_random"]} - set(args.prompt_ks)):
            measure(results, k, model, tokenizer, embed, pool, test)
    if args.peek:
        peek(results, args.peek, model, tokenizer, pool, test)
    del model
    if not args.prompt_only:
        fine_tuning(args, results, tokenizer, pool, test)
    total_s = time.perf_counter() - started
    if saved:
        payload = {**saved, "results": results}
        payload["prompt_runs"] = [*saved.get("prompt_runs", []), {"args": vars(args), "total_s": total_s}]
    else:
        payload = {"args": vars(args), "results": results, "pool": len(pool), "total_s": total_s,
                   "device": device_note()}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    (RESULTS / "techniques_fewshot.md").write_text(markdown(payload))
    print(markdown(payload))


def shot_prompts(k: int, strategy: str, rows: list[dict], pool: list[dict], embed, limit) -> list:
    """The k-per-class prompts for `rows`, measured against the model's context (`drop` policy: a prompt that
    does not fit loses its farthest demonstrations, and the count is kept and reported)."""
    from tunelab.eval.fewshot.prompts import kshot_examples

    return kshot_examples(
        [chat(r) for r in rows], [chat(r) for r in pool], k * len(LABELS),
        strategy=strategy, embed=embed, layout="inline", instruction=INSTRUCTION, limit=limit,
    )  # fmt: skip


def prompting(args, results: dict, model, tokenizer, embed, pool: list[dict], test: list[dict]) -> None:
    from tunelab.eval.fewshot.context import ContextLimit, context_summary

    limit = ContextLimit.for_model(model, tokenizer, MAX_NEW_TOKENS, overflow="drop")
    prompt_rows = test[: args.prompt_eval]
    for k in args.prompt_ks:
        for strategy in ("random", "similar"):
            if k == 0 and strategy == "similar":
                results["prompt_similar"]["0"] = results["prompt_random"]["0"]  # no shots: the same prompt
                continue
            t0 = time.perf_counter()
            examples = shot_prompts(k, strategy, prompt_rows, pool, embed, limit)
            acc = accuracy(generate(model, tokenizer, examples, 8), prompt_rows)
            results[f"prompt_{strategy}"][str(k)] = {
                "accuracy": acc, "n": len(prompt_rows), "s": time.perf_counter() - t0, **context_summary(examples),
                "context": limit.window, "max_prompt_tokens": limit.max_tokens,
            }  # fmt: skip
            print(f"prompt {strategy} k={k}: {acc:.1%}  {context_summary(examples)}", flush=True)


def measure(results: dict, k: int, model, tokenizer, embed, pool: list[dict], test: list[dict]) -> None:
    """Prompt lengths of an already measured k, on the rows it was scored on."""
    from tunelab.eval.fewshot.context import ContextLimit, context_summary

    limit = ContextLimit.for_model(model, tokenizer, MAX_NEW_TOKENS, overflow="drop")
    for strategy in ("random", "similar"):
        cell = results[f"prompt_{strategy}"][str(k)]
        examples = shot_prompts(k, strategy, test[: cell["n"]], pool, embed, limit)
        cell.update(context_summary(examples), context=limit.window, max_prompt_tokens=limit.max_tokens)


def peek(results: dict, n: int, model, tokenizer, pool: list[dict], test: list[dict]) -> None:
    """The answers to the first `n` held-out sentences, random shots, for each prompting k without samples (the
    same prompts the scored run built for them; batches differ, so bf16 answers may differ slightly)."""
    rows = test[:n]
    for k in sorted(int(k) for k in results["prompt_random"]):
        cell = results["prompt_random"][str(k)]
        if "samples" not in cell:
            answers = generate(model, tokenizer, shot_prompts(k, "random", rows, pool, None, None), 8)
            cell["samples"] = [{"label": r["label"], "answer": a} for r, a in zip(rows, answers, strict=True)]


def fine_tuning(args, results: dict, tokenizer, pool: list[dict], test: list[dict]) -> None:
    from tunelab.methods.trained import artifact_dir
    from tunelab.objectives.embed.setfit_head import SetFitClassifier

    with tempfile.TemporaryDirectory(prefix="tunelab-fewshot-") as tmp:
        work = Path(tmp)
        test_examples = _as_examples(zero_shot_rows(test))
        for k in args.tune_ks:
            rows = first_k(pool, k)
            data = write_jsonl(work / f"chat{k}.jsonl", zero_shot_rows(rows))
            result, train_s = train(f"lora{k}", work, [
                f"data.train={data}", "data.val_fraction=0", "method=lora", "method.r=8", "method.alpha=16",
                "training.learning_rate=1e-3", "training.batch_size=8", f"training.max_steps={args.lora_steps}",
                f"training.num_threads={args.threads}",
            ])  # fmt: skip
            acc = accuracy(generate(result.model, tokenizer, test_examples, 16), test)
            results["lora"][str(k)] = {"accuracy": acc, "n": len(test), "train_s": train_s}
            print(f"lora k={k}: {acc:.1%}", flush=True)
            labelled = write_jsonl(work / f"labelled{k}.jsonl", rows)
            result, train_s = train(f"setfit{k}", work, [
                f"data.train={labelled}", "data.val_fraction=0", "objective=setfit",
                f"objective.pairs_per_text={args.setfit_pairs}", "method=full", "training.learning_rate=2e-5",
                "training.batch_size=16", "training.epochs=1", f"training.num_threads={args.threads}",
            ], model="minilm-l6")  # fmt: skip
            classifier = SetFitClassifier.load(artifact_dir(result.run_dir, "full"))
            acc = accuracy(classifier.predict([r["text"] for r in test]), test)
            results["setfit"][str(k)] = {"accuracy": acc, "n": len(test), "train_s": train_s}
            print(f"setfit k={k}: {acc:.1%}", flush=True)


def _as_examples(rows: list[dict]):
    from tunelab.core.types import Message
    from tunelab.data.records import Example

    return [Example(messages=[Message(m["role"], m["content"]) for m in r["messages"]]) for r in rows]


def markdown(payload: dict) -> str:
    a, res = payload["args"], payload["results"]
    ks = sorted({int(k) for table in res.values() for k in table})

    def cell(method: str, k: int) -> str:
        row = res[method].get(str(k))
        return f"{row['accuracy']:.1%}" if row else "—"

    def prompt_facts(k: int) -> tuple[str, str]:
        cells = [res[m][str(k)] for m in ("prompt_random", "prompt_similar") if str(k) in res[m]]
        if not cells:
            return "—", "—"
        n = "/".join(sorted({str(c["n"]) for c in cells}))
        if cells[0].get("longest_prompt") is None:
            return n, "—"
        longest = max(c["longest_prompt"] for c in cells)
        shortened = sum(c["prompts_shortened"] for c in cells)
        fits = f"{longest} of {cells[0]['max_prompt_tokens']}" + (
            f", {shortened} prompts shortened" if shortened else ", fits"
        )
        return n, fits

    runs = [{"args": a}, *payload.get("prompt_runs", [])]
    commands = "; then ".join(f"`{command(run['args'])}`" for run in runs)
    lines = [
        "## Few-shot: prompting vs fine-tuning, accuracy vs k",
        "",
        f"Commands: {commands}" + (" (prompting arm only, merged into the saved results)." if len(runs) > 1 else "."),
        "",
        f"Task: topic (sports / food / weather) of short generated sentences (seeded; pool {payload['pool']} "
        f"sentences, held-out {a['test']} with subject/predicate pairs no pool sentence has). k is examples per "
        "class. Prompting: SmolLM2-135M-Instruct, greedy, k x 3 inline demonstrations from the pool, at random or "
        "the nearest by MiniLM embedding (nearest last), scored on the first n held-out sentences (n in the table; "
        "long prompts are slow on this CPU, so larger k is scored on fewer sentences). Every prompt is measured "
        "against the model's context (max_position_embeddings less the 3 answer tokens) with the `drop` policy: a "
        "prompt that does not fit would lose its farthest demonstrations, and the table would say how many prompts "
        f"did. LoRA: r 8 on SmolLM2, {a['lora_steps']} steps of 8 on the first k per class, zero-shot prompt format, "
        f"scored on all {a['test']}. SetFit: MiniLM-L6, {a['setfit_pairs']} pair rounds per text, 1 epoch, lr 2e-5, "
        f"logistic-regression head, scored on all {a['test']}. Metric everywhere: the answer's first word equals the "
        f"label. Device: {payload['device']}; whole demo {payload['total_s']:.0f} s"
        + "".join(
            f", prompting run {i + 1} {run['total_s']:.0f} s" for i, run in enumerate(payload.get("prompt_runs", []))
        )
        + ". Runs used 1 thread on a shared 2-core CPU, so wall times are upper bounds.",
        "",
        "| k per class | prompt, random shots | prompt, similar shots | LoRA fine-tune | SetFit | prompt n "
        "| longest prompt (tokens of the limit) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in ks:
        cells = " | ".join(cell(method, k) for method in ("prompt_random", "prompt_similar", "lora", "setfit"))
        lines.append(f"| {k} | {cells} | {' | '.join(prompt_facts(k))} |")
    lines += ["", reading(res), *samples_text(res), ""]
    return "\n".join(lines)


def samples_text(res: dict) -> list[str]:
    """What the model answered to the first held-out sentences (random shots), where the json has samples."""
    rows = [(int(k), c["samples"]) for k, c in res["prompt_random"].items() if "samples" in c]
    if not rows:
        return []
    labels = ", ".join(s["label"] for s in rows[0][1])
    lines = ["", f"Answers to the first {len(rows[0][1])} held-out sentences (labels: {labels}), random shots:", ""]
    for k, samples in sorted(rows):
        lines.append(f"- k={k}: " + ", ".join(f"`{s['answer']}`" for s in samples))
    return lines


def command(a: dict) -> str:
    if a.get("prompt_only"):
        ks = f"--prompt-eval {a['prompt_eval']} --prompt-ks {' '.join(map(str, a['prompt_ks']))} "
        return (
            f".venv/bin/python benchmarks/techniques_fewshot.py --prompt-only {ks if a['prompt_ks'] else ''}"
            + (f"--peek {a['peek']} " if a.get("peek") else "")
            + f"--threads {a['threads']}"
        )
    return (
        f".venv/bin/python benchmarks/techniques_fewshot.py --test {a['test']} --prompt-eval {a['prompt_eval']} "
        f"--prompt-ks {' '.join(map(str, a['prompt_ks']))} --tune-ks {' '.join(map(str, a['tune_ks']))} "
        f"--lora-steps {a['lora_steps']} --setfit-pairs {a['setfit_pairs']} --threads {a['threads']}"
    )


def reading(res: dict) -> str:
    """Two sentences from the numbers: the best of each family and where it was reached."""

    def best(method: str) -> tuple[str, float]:
        table = res[method]
        k = max(table, key=lambda key: table[key]["accuracy"]) if table else "—"
        return k, table[k]["accuracy"] if table else float("nan")

    parts = [f"{name} {acc:.1%} (k={k})" for name, (k, acc) in
             (("random-shot prompting", best("prompt_random")), ("similar-shot prompting", best("prompt_similar")),
              ("LoRA", best("lora")), ("SetFit", best("setfit")))]  # fmt: skip
    zero = res["prompt_random"].get("0", {}).get("accuracy")
    zero_text = f" Zero-shot prompting scores {zero:.1%}." if zero is not None else ""
    measured = [(int(k), c) for m in ("prompt_random", "prompt_similar") for k, c in res[m].items()
                if c.get("longest_prompt") is not None]  # fmt: skip
    context_text = ""
    if measured:
        k, top = max(measured, key=lambda kc: kc[1]["longest_prompt"])
        shortened = sum(c["prompts_shortened"] for _, c in measured)
        context_text = (
            f" The longest prompt (k={k} per class, {k * len(LABELS)} demonstrations) is {top['longest_prompt']} "
            f"tokens of the {top['max_prompt_tokens']} SmolLM2's {top['context']} positions leave for the prompt; "
            + (f"{shortened} prompts had to be shortened." if shortened else "no prompt was shortened.")
        )
        last = str(max(int(k) for k in res["prompt_random"]))
        if last in res["prompt_similar"]:
            context_text += (
                f" At the largest k ({last} per class) prompting scores {res['prompt_random'][last]['accuracy']:.1%} "
                f"(random) and {res['prompt_similar'][last]['accuracy']:.1%} (similar shots) with every prompt "
                "inside the context, so a drop there is not truncation (the answers below show what the model says)."
            )
    return (
        f"Reading: best of each: {', '.join(parts)}.{zero_text} Chance is {1 / len(LABELS):.1%}.{context_text} "
        "Each class has its own subjects and predicates, so a trained model separates them easily; the question "
        "is how few examples it takes, and whether demonstrations in the prompt do the same for a 135M model."
    )


if __name__ == "__main__":
    main()
