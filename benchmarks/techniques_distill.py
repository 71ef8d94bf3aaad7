"""Distillation demo: a fine-tuned SmolLM2-135M-Instruct teacher, a half-depth student made from it, and the
student trained with and without knowledge distillation on the same data and budget.

1. Teacher: LoRA (r 16) on examples/dates for `--teacher-steps`, merged into a full model.
2. Student: the teacher with every other layer kept (15 of 30: 0, 2, ..., 26 and the last), `make_student`.
3. Student without KD: full fine-tuning with the next-token loss for `--steps`.
   Student with KD: the same, objective distill (forward KL at τ = 2, α = 0.5, teacher top-32 cached on disk).
Reported for each: parameters, greedy decoding speed on the held-out prompts, held-out exact match and next-token
loss on the reference answers.

    .venv/bin/python benchmarks/techniques_distill.py
    .venv/bin/python benchmarks/techniques_distill.py --teacher-steps 1 --steps 1 --eval 4 --rows 16   # smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from techniques_common import answer, parameters, prompt_and_reference, rows, save, score, train, write_jsonl


def held_out_loss(model, tokenizer, chat_rows: list[dict]) -> float:
    """Next-token loss on the reference answers of held-out chat rows."""
    import torch

    from tunelab.data.records import Example, Message
    from tunelab.data.tokenize import tokenize_example
    from tunelab.objectives import OBJECTIVES
    from tunelab.train.loop import TrainingModule, validation_metrics
    from tunelab.train.run import use_bf16

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=24)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of each student")
    parser.add_argument("--rows", type=int, default=192, help="training rows (batch 8)")
    parser.add_argument("--eval", type=int, default=40, help="held-out test prompts")
    args = parser.parse_args()

    from tunelab.distill.student import make_student
    from tunelab.export.merge import save_merged
    from tunelab.models import load_model, load_tokenizer

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
    save("distill", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
