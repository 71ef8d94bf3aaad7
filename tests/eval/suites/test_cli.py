"""`tunelab eval RUN --suite robustness --suite bias` end to end on tiny run folders (a generator and a
classifier, each tuned model beside its base): the files written, a replay of the saved suite, per-row notes,
and the errors a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

from tests.tiny import build_tiny_llama
from tunelab.cli.main import main
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.heads import attach_head_, save_head


def fake_run(folder: Path, base: Path, objective: str) -> Path:
    """A finished run without training: config.yaml naming the base model, and the method's result made up. A
    generator is a `full` run whose model/ holds other random weights; a classifier a `lora` run whose adapter/
    holds a random LoRA adapter (B not zero) beside a random head."""
    method = "lora" if objective == "classify" else "full"
    if objective == "classify":
        torch.manual_seed(0)
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        body = get_peft_model(load_model(str(base)), lora)
        body.save_pretrained(folder / "adapter")
        load_tokenizer(str(base)).save_pretrained(folder / "adapter")
        save_head(attach_head_(body, HeadConfig(labels=["neg", "pos"])), folder / "adapter")
    else:
        build_tiny_llama(folder / "model", seed=1)
    config = {"model": {"source": str(base)}, "method": {"name": method}, "objective": {"name": objective}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_generator_run_end_to_end(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run = fake_run(tmp_path / "run", tiny_model_dir, "sft")
    data = write_rows(tmp_path / "test.jsonl", [
        chat("what is color of cat", "red"), chat("he sat on the mat, what is color of mat", "red"),
        chat("{names} asked: what is color of sky", "blue"), chat("the dog ran " * 100, "blue"),
    ])  # fmt: skip
    args = ["eval", str(run), "--data", str(data), "--suite", "robustness", "--suite", "bias", "--max-new-tokens",
            "3", "--attribute", "gender", "--attribute", "names", "--max-fills", "1", "--seed", "5"]  # fmt: skip
    assert main(args) == 0
    out = run / "eval"
    robustness = json.loads((out / "robustness.json").read_text())
    assert robustness["models"] == ["base", "tuned"] and robustness["rows"] == 4
    assert [p["name"] for p in robustness["perturbations"]] == [
        "typos", "case", "whitespace", "punctuation", "template", "distractor", "paraphrase"
    ]  # fmt: skip
    assert "the run's base model" in robustness["paraphraser"]
    assert any(n["row"] == 3 and "over the model's context" in n["note"] for n in robustness["notes"])
    assert all(p["scored"] <= 3 for p in robustness["perturbations"])
    bias = json.loads((out / "bias.json").read_text())
    attrs = {a["attribute"]: a for a in bias["attributes"]}
    assert attrs["gender"]["pairs"] == 1 and attrs["names"]["pairs"] == 5 and bias["gap_unit"].startswith("log")
    assert set(attrs["names"]["models"]) == {"base", "tuned"} and "comparison" in attrs["names"]
    assert len((out / "bias_pairs.jsonl").read_text().splitlines()) == 6
    printed = capsys.readouterr().out
    assert "Robustness" in printed and "Bias probe" in printed and "cannot show" in printed

    suite = (out / "robustness_suite.jsonl").read_bytes()
    replay = tmp_path / "replay"
    assert main([*args[:2], "--data", str(data), "--suite", "robustness", "--max-new-tokens", "3",
                 "--suite-file", str(out / "robustness_suite.jsonl"), "--suite-out", str(replay)]) == 0  # fmt: skip
    assert (replay / "robustness_suite.jsonl").read_bytes() == suite
    assert json.loads((replay / "robustness.json").read_text())["perturbations"] == robustness["perturbations"]


def test_classifier_run_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = fake_run(tmp_path / "run", tiny_model_dir, "classify")
    data = write_rows(tmp_path / "test.jsonl", [
        {"text": "he ran to the mat", "label": "pos"}, {"text": "the Muslim cat sat", "label": "neg"},
        {"text": "one two three", "label": "pos"},
    ])  # fmt: skip
    out = tmp_path / "out"
    assert main(["eval", str(run), "--data", str(data), "--suite", "bias", "--suite", "robustness",
                 "--suite-out", str(out), "--perturb", "case", "--perturb", "paraphrase"]) == 0  # fmt: skip
    robustness = json.loads((out / "robustness.json").read_text())
    assert robustness["metric"] == "accuracy" and [p["name"] for p in robustness["perturbations"]] == ["case"]
    bias = json.loads((out / "bias.json").read_text())
    assert bias["kind"] == "classifier" and bias["gap_unit"] == "probability"
    attrs = {a["attribute"]: a for a in bias["attributes"]}
    assert attrs["gender"]["pairs"] == 1 and attrs["religion"]["pairs"] == 5 and attrs["age"]["pairs"] == 0
    for summary in attrs["religion"]["models"].values():
        assert 0 <= summary["changed_rate"]["estimate"] <= 1 and summary["mean_abs_gap"]["estimate"] <= 1


def test_user_errors_exit_2_without_traceback(tmp_path: Path, tiny_model_dir: Path,
                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    data = write_rows(tmp_path / "test.jsonl", [chat("what is color of cat", "red")])
    base = ["eval", str(tiny_model_dir), "--data", str(data), "--suite-out", str(tmp_path / "o")]
    assert main([*base, "--suite", "robustnes"]) == 2
    assert "The suites are: robustness, bias" in capsys.readouterr().err
    bad = tmp_path / "mine.txt"
    bad.write_text("groups: a | b\nx | y | z\n")
    assert main([*base, "--suite", "bias", "--terms", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main([*base, "--suite", "robustness", "--perturb", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "Unknown perturbation 'nosuch'" in err and "Traceback" not in err
