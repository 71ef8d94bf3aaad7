"""`tunelab eval MODEL --harness TASKS`: lm-evaluation-harness on the tiny model with local task files, offline.
A multiple-choice task's accuracy is checked against the choices' log-likelihoods computed here by hand; the
shipped dates example runs as a generate_until task from its relative data path; an unknown task is exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "harness"
DOCS = [
    {"question": "the cat is", "choices": [" red", " blue", " green"], "answer": 0},
    {"question": "the sky is", "choices": [" blue", " red", " cold"], "answer": 0},
    {"question": "grass is", "choices": [" red", " green", " tall"], "answer": 1},
    {"question": "snow is", "choices": [" hot", " white", " blue"], "answer": 1},
    {"question": "the sun is", "choices": [" dark", " small", " bright"], "answer": 2},
]
TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/choice.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "choice.yaml").write_text(TASK)
    return folder


def by_hand(model_dir: Path) -> list[float]:
    """Accuracy per document: does the answer's continuation have the highest summed log-probability?"""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    scores = []
    for doc in DOCS:
        context = tokenizer(doc["question"])["input_ids"]
        totals = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["question"] + choice)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            totals.append(sum(logits[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        scores.append(float(max(range(len(totals)), key=totals.__getitem__) == doc["answer"]))
    return scores


def test_multiple_choice_accuracy_matches_log_likelihoods_by_hand(tmp_path: Path, tiny_model_dir: Path) -> None:
    tasks, out = write_task(tmp_path / "tasks"), tmp_path / "out"
    args = ["eval", str(tiny_model_dir), str(tiny_model_dir), "--harness", "tiny_choice", "--harness-tasks-dir",
            str(tasks), "--no-harness-chat", "--out", str(out), "--resamples", "200"]  # fmt: skip
    assert main(args) == 0
    want = by_hand(tiny_model_dir)
    rows = [json.loads(line) for line in (out / "predictions_tiny_choice_1.jsonl").read_text().splitlines()]
    assert [r["acc"] for r in sorted(rows, key=lambda r: r["doc_id"])] == want
    report = json.loads((out / "harness.json").read_text())
    comparison = report["comparison"]
    first, second = comparison["columns"]
    assert comparison["values"][first]["tiny_choice/acc"] == pytest.approx(sum(want) / len(want))
    assert report["lm_eval"][first]["results"]["tiny_choice"]["acc,none"] == pytest.approx(sum(want) / len(want))
    interval = comparison["intervals"][first]["tiny_choice/acc"]
    assert interval["low"] <= sum(want) / len(want) <= interval["high"]
    # The same model twice: paired on the same documents, no difference.
    test = comparison["tests"]["tiny_choice/acc"]
    assert comparison["paired"] and test["delta"]["estimate"] == 0 and not test["significant"]
    assert comparison["values"][second] == comparison["values"][first]


def test_the_shipped_dates_task_runs_from_its_relative_data_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    args = ["eval", str(tiny_model_dir), "--harness", "dates_iso", "--harness-tasks-dir", str(EXAMPLES),
            "--max-examples", "3", "--out", str(out), "--resamples", "100"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "predictions_dates_iso_1.jsonl").read_text().splitlines()]
    test_rows = [json.loads(line) for line in (EXAMPLES.parent / "dates" / "test.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [t["messages"][1]["content"] for t in test_rows[:3]]
    assert all(r["exact_match"] == float(r["prediction"].strip() == r["reference"]) for r in rows)
    assert "<|im_start|>" in rows[0]["prompt"]  # the tokenizer's chat template wraps the question by default
    values = json.loads((out / "harness.json").read_text())["comparison"]["values"]
    assert set(values[tiny_model_dir.name]) == {"dates_iso/exact_match"}


def test_an_unknown_task_is_exit_2_naming_the_local_tasks(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = write_task(tmp_path / "tasks")
    assert main(["eval", str(tiny_model_dir), "--harness", "tiny_choise", "--harness-tasks-dir", str(tasks)]) == 2
    err = capsys.readouterr().err
    assert "no lm-eval task named 'tiny_choise'" in err and "its tasks: tiny_choice" in err and "Traceback" not in err
