"""Distillation demo: a fine-tuned SmolLM2-135M-Instruct teacher, a half-depth student made from it, and the
student trained with and without knowledge distillation on the same data and budget.

1. Teacher: LoRA (r 16) on examples/dates for `--teacher-steps`, merged into a full model.
2. Student: the teacher with every other layer kept (15 of 30: 0, 2, ..., 26 and the last), `make_student`.
3. Student without KD: full fine-tuning with the next-token loss for `--steps`.
   Student with KD: the same, objective distill (forward KL at τ = 2, α = 0.5, teacher top-32 cached on disk).
Reported for each: parameters, greedy decoding speed on the held-out prompts, held-out exact match and next-token
loss on the reference answers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_distill.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/techniques_distill.py --smoke
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
    parameters,
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

NAMES = {
    "teacher": "teacher (LoRA SFT, merged)",
    "student_init": "student, layers dropped, untrained",
    "student_sft": "student trained without KD",
    "student_kd": "student trained with KD",
}


def held_out_loss(model, tokenizer, chat_rows: list[dict]) -> float:
    """Next-token loss on the reference answers of held-out chat rows."""
    import torch

    from tunelab.core.device import use_bf16
    from tunelab.core.types import Message
    from tunelab.data.records import Example
    from tunelab.data.tokenize import tokenize_example
    from tunelab.objectives.registry import OBJECTIVES
    from tunelab.train.module import TrainingModule
    from tunelab.train.validation import validation_metrics

    examples = [Example([Message(m["role"], m["content"]) for m in r["messages"]]) for r in chat_rows]
    items = [tokenize_example(e, tokenizer, 256) for e in examples]
    device = torch.device("cpu")
    module = TrainingModule(model, OBJECTIVES["sft"])
    return validation_metrics(module, items, 16, tokenizer.pad_token_id, device, use_bf16("auto", device))["val_loss"]


def measure(name: str, model, tokenizer, test_rows: list[dict], train_s: float | None = None) -> dict:
    prompts, references = zip(*(prompt_and_reference(r) for r in test_rows), strict=True)
    start = time.perf_counter()
    answers = answer(model, tokenizer, list(prompts))
    seconds = time.perf_counter() - start
    generated = sum(len(tokenizer(a)["input_ids"]) + 1 for a in answers)  # + the stop token
    row = {
        "parameters": parameters(model), "layers": model.config.num_hidden_layers,
        **score(answers, list(references)), "held_out_loss": held_out_loss(model, tokenizer, test_rows),
        "decode_tokens_per_s": generated / seconds, "eval_s": seconds, "train_s": train_s, "samples": answers[:3],
    }  # fmt: skip
    print(name, row, flush=True)
    return row


def other_runs() -> list[str]:
    """One line per other budget kept as results/techniques_distill_<label>.json, so no run drops out of view."""
    lines = []
    for path in sorted(RESULTS.glob("techniques_distill_*.json")):
        r = json.loads(path.read_text())
        kd, sft = r["results"]["student_kd"], r["results"]["student_sft"]
        lines.append(
            f"Other run (`{r['command']}`, {path.name}): held-out loss without KD {sft['held_out_loss']:.3f}, with "
            f"KD {kd['held_out_loss']:.3f}; exact match {pct(sft['exact_match'])} vs {pct(kd['exact_match'])}; "
            f"ISO format {pct(sft['iso_format'])} vs {pct(kd['iso_format'])}."
        )
    return lines


def section(args: argparse.Namespace, res: dict) -> list[str]:
    lines = [
        "## Knowledge distillation: fine-tuned teacher → half-depth student",
        "",
        f"Command: `{command('distill')}`",
        "",
        f"Teacher: SmolLM2-135M-Instruct after LoRA SFT (r 16, lr 1e-3, {args.teacher_steps} steps of 8) on the "
        f"first {args.rows} rows of examples/dates, merged. Student: the teacher with every other layer kept "
        f"(`make_student`), then full fine-tuning on the same rows for {args.steps} steps of 8 (lr 1e-4), without KD "
        "(next-token loss) or with KD (objective `distill`: forward KL at τ 2 mixed α 0.5 with the next-token loss, "
        f"teacher top-32 logits cached). Held-out: the first {args.eval} test prompts (greedy exact match, decoding "
        "speed over those answers at batch 16) and the next-token loss on their reference answers.",
        "",
        "| model | layers | parameters | decode tok/s | exact match | ISO format | held-out loss | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in res.items():
        train_s = f"{row['train_s']:.0f}" if row.get("train_s") else ""
        lines.append(
            f"| {NAMES[name]} | {row['layers']} | {row['parameters'] / 1e6:.1f}M | {row['decode_tokens_per_s']:.1f} | "
            f"{pct(row['exact_match'])} | {pct(row['iso_format'])} | {row['held_out_loss']:.3f} | {train_s} |"
        )
    kd, sft, teacher = res["student_kd"], res["student_sft"], res["teacher"]
    better = kd["held_out_loss"] < sft["held_out_loss"]
    speedup = kd["decode_tokens_per_s"] / teacher["decode_tokens_per_s"]
    return [
        *lines,
        "",
        f"Reading: the student has {kd['parameters'] / teacher['parameters']:.0%} of the teacher's parameters "
        f"(the token embeddings, a large share of a 135M model, stay whole) and decodes {speedup:.1f}x as fast."
        f" With KD its held-out loss is {'lower' if better else 'not lower'} than without "
        f"({kd['held_out_loss']:.3f} vs {sft['held_out_loss']:.3f}) and its exact match is "
        f"{pct(kd['exact_match'])} vs {pct(sft['exact_match'])} (teacher {pct(teacher['exact_match'])}), its "
        f"ISO-format rate {pct(kd['iso_format'])} vs {pct(sft['iso_format'])}. The two "
        "students have the same shape, so the gap between their decoding speeds is the noise of the shared CPU."
        + (
            f" Both students stay far from the teacher after {args.steps} steps (held-out loss "
            f"{res['student_init']['held_out_loss']:.1f} untrained, ~{sft['held_out_loss']:.1f} after, teacher "
            f"{teacher['held_out_loss']:.2f}): this compares two students still recovering from losing half their "
            "layers, so any KD edge seen here is small and uncertain."
            if max(kd["exact_match"], sft["exact_match"]) < 0.05
            else ""
        ),
        *(["", *other_runs()] if other_runs() else []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=12)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each student")
    parser.add_argument("--rows", type=int, default=96, help="training rows (batch 8)")
    parser.add_argument("--eval", type=int, default=32, help="held-out test prompts")
    parser.add_argument("--smoke", action="store_true", help="1 step each, 16 rows; results to a temp folder")
    args = parser.parse_args()
    if args.smoke:
        args.teacher_steps, args.steps, args.rows, args.eval = 1, 1, 16, 4
    started = time.perf_counter()

    from tunelab.export.hf import save_merged
    from tunelab.models.load import load_model, load_tokenizer
    from tunelab.objectives.distill.student import make_student

    test_rows = rows("test")[: args.eval]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-distill-") as tmp:
        work = Path(tmp)
        data = write_jsonl(work / "train.jsonl", rows("train")[: args.rows])
        common = [f"data.train={data}", "data.val_fraction=0", "training.batch_size=8", "training.warmup_ratio=0.1"]
        teacher_run, teacher_s = train("teacher", work, [*common, "method=lora", "method.r=16", "method.alpha=32",
                                                         f"training.max_steps={args.teacher_steps}",
                                                         "training.learning_rate=1e-3"])  # fmt: skip
        teacher_dir = save_merged(str(teacher_run.run_dir), work / "teacher")
        tokenizer = load_tokenizer(str(teacher_dir))
        results["teacher"] = measure("teacher", load_model(str(teacher_dir)), tokenizer, test_rows, teacher_s)
        student_dir = make_student(str(teacher_dir), work / "student")
        results["student_init"] = measure("student_init", load_model(str(student_dir)), tokenizer, test_rows)
        full = [*common, "method=full", f"training.max_steps={args.steps}", "training.learning_rate=1e-4"]
        plain, plain_s = train("student_sft", work, full, model=str(student_dir))
        results["student_sft"] = measure("student_sft", plain.model, tokenizer, test_rows, plain_s)
        kd, kd_s = train("student_kd", work, [*full, "objective=distill", f"objective.teacher={teacher_dir}",
                                              "objective.temperature=2.0", "objective.alpha=0.5",
                                              "objective.top_k=32"], model=str(student_dir))  # fmt: skip
        results["student_kd"] = measure("student_kd", kd.model, tokenizer, test_rows, kd_s)
    out, wall = results_dir(args.smoke), time.perf_counter() - started
    save("distill", {"args": vars(args), "results": results, "wall_s": wall}, out)
    write_section("distill", [*section(args, results), f"Wall time of the whole demo: {wall:.0f} s."], out)


if __name__ == "__main__":
    main()
