"""Sequence-level distillation (Kim & Rush, 2016): the teacher answers every training prompt, and the student is
fine-tuned on those answers with the next-token loss. Only text passes between them, so the teacher may use any
tokenizer. Validation keeps the data's own reference answers, so it measures the student against the truth.

The teacher's answers are written to `teacher_answers.jsonl` in the run folder (and reused by a resumed run).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field

from tunelab.core.errors import ModelError
from tunelab.core.schema import Section
from tunelab.core.types import Message
from tunelab.data.pack import pack
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example
from tunelab.data.tokenize import tokenize_all
from tunelab.methods.trained import load_trained
from tunelab.models.generate import generate_answers
from tunelab.objectives.base import Objective, PrepareArgs, prepare_lm
from tunelab.objectives.lm import causal_lm_loss

ANSWERS_FILE = "teacher_answers.jsonl"


class SeqDistillConfig(Section):
    name: Literal["seq_distill"] = "seq_distill"
    teacher: str
    """The teacher: an embedded model name, a model folder, a .gguf file or a finished run folder (any tokenizer)."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Longest teacher answer, in the teacher's tokens."""
    batch_size: int = Field(default=16, ge=1)
    """Prompts per teacher generation batch."""
    keep_original: bool = False
    """Also train on the data's own answers (next to the teacher's)."""


def teacher_answers(args: PrepareArgs[SeqDistillConfig], records: list[Example], out: Path) -> dict[str, str]:
    """origin -> the teacher's greedy answer to the record's prompt (read back from `out` when already there)."""
    if out.is_file():
        return {row["origin"]: row["answer"] for row in map(json.loads, out.read_text().splitlines())}
    cfg = args.objective
    teacher, tokenizer = load_trained(cfg.teacher)
    answers = generate_answers(
        teacher.to(args.device), tokenizer, [ex.prompt_and_answer()[0] for ex in records],
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, system_prompt=args.data.system_prompt,
        precision="bf16" if args.bf16 else "fp32",
    )  # fmt: skip
    found = {ex.origin: answer for ex, answer in zip(records, answers, strict=True)}
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"origin": k, "answer": v}, ensure_ascii=False) + "\n" for k, v in found.items()))
    tmp.replace(out)
    return found


def prepare_teacher_data(args: PrepareArgs[SeqDistillConfig]) -> PreparedData:
    """The usual chat data, with every training answer replaced by the teacher's (or joined by it)."""
    data = prepare_lm(args)
    d, tokenizer, run_dir = args.data, args.tokenizer, args.run_dir
    prepared = args.dataset()
    records = [ex for r in prepared.table("train_records").to_pylist() if (ex := Example.from_row(r)).kind == "chat"]
    answers = teacher_answers(args, records, run_dir / ANSWERS_FILE)
    distilled = [
        Example([*ex.prompt_and_answer()[0], Message("assistant", answers[ex.origin])], ex.origin, task=ex.task)
        for ex in records
        if answers.get(ex.origin, "").strip()
    ]
    if records and not distilled:
        raise ModelError(
            f"The teacher {args.objective.teacher} gave an empty answer to all {len(records)} training prompts (see "
            f"{run_dir / ANSWERS_FILE}), so there is nothing to distil. Use a teacher that answers these prompts "
            "(an instruction-tuned model or a finished run), or raise objective.max_new_tokens."
        )
    train, rejects = tokenize_all(distilled, tokenizer, d.max_length, d.loss_on, d.system_prompt, d.truncation)
    if d.packing:
        train = pack(train, d.max_length)
    report = {**data.report, "teacher_answers": {
        "answered": len(distilled), "empty": len(records) - len(distilled), "trained": len(train),
        "rejected": len(rejects),
    }}  # fmt: skip
    report_file = run_dir / "data_report.json"
    if report_file.is_file():  # the run's data report records what the teacher's answers added
        report_file.write_text(json.dumps({**json.loads(report_file.read_text()), **report}, indent=2))
    return replace(data, train=train + data.train if args.objective.keep_original else train, report=report)


OBJECTIVE = Objective(name="seq_distill", loss=causal_lm_loss, config=SeqDistillConfig, prepare=prepare_teacher_data)
