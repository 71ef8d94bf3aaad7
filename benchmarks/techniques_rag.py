"""RAG demo: SmolLM2-135M-Instruct answering questions about invented buildings whose facts only a shipped corpus
of fact cards holds (examples/rag), alone and with retrieved passages, the retriever frozen or trained jointly.

Arms (LoRA r 16 on the generator, the same steps, batch, learning rate and seed in each):
1. generator alone: SFT on question -> answer, no retrieval (it cannot know the held-out cards' facts);
2. zero-shot RAG: the untrained generator with the top-1 passage of all-MiniLM-L6-v2 in its prompt;
3. RAG, frozen retriever: objective rag, the generator trained with the top-1 passage in its prompt;
4. RAG, joint retriever: the same plus REPLUG LSR training of the retriever (objective.joint=true).
Reported on the held-out questions (cards no training question is about): greedy exact match, and the
retriever's recall@1 / recall@4 of the gold card among all cards.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_rag.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_rag.py --smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from techniques_common import ROOT, answer, command, pct, results_dir, save, train, write_jsonl, write_section

DATA = ROOT / "examples" / "rag"
NAMES = {
    "alone": "generator alone (SFT, no retrieval)",
    "zero_shot": "untrained generator + MiniLM top-1",
    "frozen": "RAG fine-tuning, frozen retriever",
    "joint": "RAG fine-tuning, joint retriever (REPLUG LSR)",
}


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def measure(generator, tokenizer, retriever, rows: list[dict], args, train_s: float | None = None) -> dict:
    """Exact match of greedy answers (with the retriever's top-1 card in the prompt when there is a retriever)."""
    from tunelab.objectives.rag.data import QARow
    from tunelab.objectives.rag.generator import DEFAULT_TEMPLATE, rag_prompt
    from tunelab.objectives.rag.objective import retrieval_recall

    questions, references = [r["question"] for r in rows], [r["answer"] for r in rows]
    out: dict = {"train_s": train_s}
    prompts = questions
    if retriever is not None:
        qa = [QARow(r["question"], r["answer"], r["passage"], "") for r in rows]
        out |= retrieval_recall(retriever, qa, (1, args.top_k))
        top = retriever.search(questions, 1)[:, 0].tolist()
        gold = [retriever.passages[j].id == r["passage"] for j, r in zip(top, rows, strict=True)]
        pairs = zip(top, questions, strict=True)
        prompts = [rag_prompt(DEFAULT_TEMPLATE, [retriever.passages[j].text], q) for j, q in pairs]
    start = time.perf_counter()
    answers = answer(generator, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    out["eval_s"] = time.perf_counter() - start
    hits = [a.strip() == ref for a, ref in zip(answers, references, strict=True)]
    out["exact_match"] = sum(hits) / len(hits)
    if retriever is not None:
        with_gold = [h for h, g in zip(hits, gold, strict=True) if g]
        out["exact_match_gold_top1"] = sum(with_gold) / max(len(with_gold), 1)
    shown = zip(prompts[:3], answers[:3], references[:3], strict=True)
    out["samples"] = [{"prompt": p[-120:], "answer": a, "reference": r} for p, a, r in shown]
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}), flush=True)
    return out


def section(args: argparse.Namespace, res: dict, sizes: dict) -> list[str]:
    lines = [
        "## Retrieval-augmented fine-tuning and a jointly trained retriever (REPLUG LSR)",
        "",
        f"Command: `{command('rag')}`",
        "",
        f"Data: examples/rag (`make_data.py`): {sizes['corpus']} fact cards about invented buildings (each invented "
        "name shared by three buildings of different kinds), questions that name the kind by a synonym; "
        f"{sizes['train']} training questions, held-out: the first {sizes['test']} test questions, about cards no "
        "training question is about. Generator SmolLM2-135M-Instruct, LoRA r 16 (lr 1e-3), "
        f"{args.steps} steps of 8 questions in each trained arm; retriever all-MiniLM-L6-v2 over all cards, top-"
        f"{args.top_k}, the top-1 card in the prompt. Joint: P_R = softmax(cos / {args.tau}) over the top "
        f"{args.top_k}, target Q = softmax(log P_LM(answer | card, question)), KL(Q || P_R) into the encoder "
        f"(lr {args.retriever_lr}), cards re-embedded every {args.refresh_every} steps. Greedy answers, exact match.",
        "",
        f"| arm | recall@1 | recall@{args.top_k} | exact match | EM when top-1 is the gold card | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in res.items():
        train_s = f"{row['train_s']:.0f}" if row.get("train_s") else ""
        lines.append(
            f"| {NAMES[name]} | {pct(row.get('recall@1'))} | {pct(row.get(f'recall@{args.top_k}'))} | "
            f"{pct(row['exact_match'])} | {pct(row.get('exact_match_gold_top1'))} | {train_s} |"
        )
    frozen, joint = res["frozen"], res["joint"]
    return [
        *lines,
        "",
        f"Reading: without retrieval the generator cannot answer ({pct(res['alone']['exact_match'])}); with the "
        f"top-1 card it reaches {pct(frozen['exact_match'])} with the frozen retriever and "
        f"{pct(joint['exact_match'])} with the jointly trained one, whose recall@1 on the held-out questions moved "
        f"from {pct(frozen['recall@1'])} to {pct(joint['recall@1'])} (recall@{args.top_k} "
        f"{pct(frozen[f'recall@{args.top_k}'])} → {pct(joint[f'recall@{args.top_k}'])}).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of 8 questions per trained arm")
    parser.add_argument("--eval", type=int, default=60, help="held-out questions")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--retriever-lr", type=float, default=5e-5)
    parser.add_argument("--refresh-every", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--smoke", action="store_true", help="2 steps each, 8 questions; results to a temp folder")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.eval = 2, 8
    started = time.perf_counter()

    from tunelab.models.load import load_model, load_tokenizer
    from tunelab.objectives.rag.data import read_corpus
    from tunelab.objectives.rag.retriever import load_retriever

    test = read("test")[: args.eval]
    train_rows = read("train")
    passages = read_corpus(DATA / "corpus.jsonl")
    sizes = {"corpus": len(passages), "train": len(train_rows), "test": len(test)}
    results: dict = {}
    common = ["training.batch_size=8", "training.warmup_ratio=0.1", f"training.max_steps={args.steps}",
              "training.learning_rate=1e-3", "method=lora", "method.r=16", "method.alpha=32", "data.val_fraction=0",
              "data.max_length=256"]  # fmt: skip
    rag = ["objective=rag", f"objective.corpus={DATA / 'corpus.jsonl'}", f"objective.top_k={args.top_k}",
           f"data.train={DATA / 'train.jsonl'}"]  # fmt: skip
    joint = ["objective.joint=true", f"objective.temperature={args.tau}", f"objective.retriever_lr={args.retriever_lr}",
             f"objective.refresh_every={args.refresh_every}"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tunelab-rag-") as tmp:
        work = Path(tmp)
        turns = [({"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]})
                 for r in train_rows]  # fmt: skip
        chat = [{"messages": list(t)} for t in turns]
        alone, alone_s = train("alone", work, [*common, f"data.train={write_jsonl(work / 'chat.jsonl', chat)}"])
        tokenizer = load_tokenizer("smollm2-135m")
        results["alone"] = measure(alone.model, tokenizer, None, test, args, alone_s)
        del alone
        base = load_retriever("minilm-l6", passages)
        results["zero_shot"] = measure(load_model("smollm2-135m"), tokenizer, base, test, args)
        frozen, frozen_s = train("frozen", work, [*common, *rag])
        results["frozen"] = measure(frozen.model.generator, tokenizer, frozen.model.retriever, test, args, frozen_s)
        del frozen
        joint_run, joint_s = train("joint", work, [*common, *rag, *joint])
        model = joint_run.model
        results["joint"] = measure(model.generator, tokenizer, model.retriever, test, args, joint_s)
    out, wall = results_dir(args.smoke), time.perf_counter() - started
    save("rag", {"args": vars(args), "sizes": sizes, "results": results, "wall_s": wall}, out)
    write_section("rag", [*section(args, results, sizes), f"Wall time of the whole demo: {wall:.0f} s."], out)


if __name__ == "__main__":
    main()
