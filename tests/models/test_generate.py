"""Generation and generation eval on the tiny random Llama: batching, order, stopping, peft, the table."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from torch import nn

from tests.tiny import write_color_task
from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.load import load_examples
from tunelab.data.records import Example
from tunelab.eval import evaluate as evaluate_module
from tunelab.eval.evaluate import generation_metrics, write_predictions
from tunelab.eval.table import metrics_table
from tunelab.models.generate import generate_answers, stop_token_ids, stream_reply
from tunelab.models.load import load_model, load_tokenizer

PROMPTS = ["the cat", "what is color of sky", "one two three four five six red blue", "dog", "a", "yes no", "blue"]


def chaotic(folder: Path) -> nn.Module:
    """The tiny model with its matrices redrawn at std 0.3.

    At the default init (std 0.02) the random model answers every prompt with the same newlines, which would let
    order and batching checks pass without checking anything; larger weights make each prompt's answer differ.
    """
    model = load_model(str(folder))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> nn.Module:
    return chaotic(tiny_model_dir)


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def convs(texts: list[str]) -> list[list[Message]]:
    return [[Message("user", t)] for t in texts]


def test_batched_answers_equal_one_by_one_in_the_original_order(model: nn.Module, tokenizer) -> None:
    tokenizer.padding_side = "right"
    prompts = convs(PROMPTS)
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, show_progress=False)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=8, show_progress=False)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) == len(PROMPTS)  # answers differ, so a mixed-up order would show
    assert tokenizer.padding_side == "right"  # the caller's tokenizer is untouched


def test_answers_stop_at_the_tokenizer_eos(model: nn.Module, tokenizer) -> None:
    prompt = convs(["what is color of sky"])
    full = generate_answers(model, tokenizer, prompt, max_new_tokens=8, show_progress=False)[0]
    # Make the third new token the eos of a copy of the tokenizer: the answer must end just before it.
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt[0][0].content}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)[0, ids.shape[1] :].tolist()
    k = next(i for i in range(1, len(new)) if new[i] not in new[:i])
    stopping = copy.deepcopy(tokenizer)
    stopping.eos_token = tokenizer.convert_ids_to_tokens(new[k])
    assert new[k] in stop_token_ids(model, stopping)
    cut = generate_answers(model, stopping, prompt, max_new_tokens=8, show_progress=False)[0]
    assert cut == tokenizer.decode(new[:k], skip_special_tokens=True).strip()
    assert full.startswith(cut) and len(cut) < len(full)


def test_stop_ids_include_chatml_end(model: nn.Module, tokenizer) -> None:
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tokenizer)


def test_peft_wrapped_model_generates(tiny_model_dir: Path, model: nn.Module, tokenizer) -> None:
    prompts = convs(PROMPTS[:3])
    base = generate_answers(model, tokenizer, prompts, max_new_tokens=6, show_progress=False)
    # get_peft_model changes the model it is given, so it gets its own copy.
    peft_model = get_peft_model(chaotic(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    # LoRA's B starts at zero: the wrapped model must answer exactly like the base.
    assert generate_answers(peft_model, tokenizer, prompts, max_new_tokens=6, show_progress=False) == base
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0, generator=generator)
    assert generate_answers(peft_model, tokenizer, prompts, max_new_tokens=6, show_progress=False) != base


def test_mode_is_restored_and_generation_runs_in_eval_mode(model: nn.Module, tokenizer) -> None:
    seen: list[bool] = []
    hook = model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(module.training))
    model.train()
    try:
        generate_answers(model, tokenizer, convs(["dog"]), max_new_tokens=2, show_progress=False)
    finally:
        hook.remove()
        training_after = model.training
        model.eval()
    assert seen and not any(seen)
    assert training_after


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_switches_bf16_autocast(model: nn.Module, tokenizer, precision: str, dtype: torch.dtype) -> None:
    seen: list[torch.dtype] = []
    proj = model.model.layers[0].self_attn.q_proj
    hook = proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        answers = generate_answers(
            model, tokenizer, convs(["dog", "a"]), max_new_tokens=2, show_progress=False, precision=precision
        )
    finally:
        hook.remove()
    assert len(answers) == 2
    assert set(seen) == {dtype}


def test_stream_reply_greedy_matches_generate_answers(model: nn.Module, tokenizer) -> None:
    messages = [Message("user", "what is color of sky")]
    expected = generate_answers(model, tokenizer, [messages], max_new_tokens=8, show_progress=False)[0]
    pieces = list(stream_reply(model, tokenizer, messages, max_new_tokens=8, temperature=0))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == expected


def test_stream_reply_samples_and_can_be_closed_early(model: nn.Module, tokenizer) -> None:
    torch.manual_seed(0)
    stream = stream_reply(model, tokenizer, [Message("user", "the cat")], max_new_tokens=400, temperature=1.0)
    first = next(stream)
    stream.close()  # must not hang waiting for 400 tokens, nor leave the model in a changed mode
    assert isinstance(first, str)
    assert not model.training


def test_generation_metrics_on_color_task(tmp_path: Path, model: nn.Module, tokenizer) -> None:
    examples = load_examples([write_color_task(tmp_path / "colors.jsonl", 6)]).examples
    metrics, rows = generation_metrics(
        model, tokenizer, examples, max_examples=4, max_new_tokens=4, batch_size=2, show_progress=False
    )
    # One-word answers: no BLEU-4 or ROUGE-2; two colours repeated: label metrics.
    assert set(metrics) == {"exact_match", "token_f1", "rouge_1", "rouge_l", "chrf", "macro_precision",
                            "macro_recall", "macro_f1"}  # fmt: skip
    assert len(rows) == 4
    assert [r["origin"] for r in rows] == [e.origin for e in examples[:4]]
    assert rows[0]["prompt"].startswith("what is color of ")
    assert {r["reference"] for r in rows} <= {"red", "blue"}
    assert {"prediction", "exact_match", "token_f1"} <= set(rows[0])
    out = write_predictions(rows, tmp_path / "run" / "predictions.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_generation_metrics_scores_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    refs = ["2021-03-05", "the cat sat on the mat", "blue"]
    preds = ["2021-03-05", "the cat sat", "red"]
    examples = [
        Example([Message("system", "s"), Message("user", f"q{i}"), Message("assistant", r)], origin=f"f:{i}")
        for i, r in enumerate(refs)
    ]
    seen: dict = {}

    def fake_generate(model, tokenizer, prompts, **kwargs):
        seen.update(prompts=prompts, **kwargs)
        return preds[: len(prompts)]

    monkeypatch.setattr(evaluate_module, "generate_answers", fake_generate)
    metrics, rows = generation_metrics(
        None, None, examples, max_examples=None, max_new_tokens=5, batch_size=2, precision="bf16"
    )
    # exact: 1, 0, 0 -> 1/3. token F1: 1, 2/3 (see the metrics tests), 0 -> 5/9. ROUGE-L: 1, 2/3, 0 -> 5/9.
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["token_f1"] == pytest.approx(5 / 9)
    assert metrics["rouge_l"] == pytest.approx(5 / 9)
    # References average 8/3 words, fewer than BLEU-4 needs, so BLEU is left out rather than reported as 0.
    assert "bleu" not in metrics
    assert [r["prompt"] for r in rows] == ["q0", "q1", "q2"]
    assert seen["prompts"][0] == [Message("system", "s"), Message("user", "q0")]
    assert seen["precision"] == "bf16" and seen["max_new_tokens"] == 5
    assert generation_metrics(None, None, examples, max_examples=2, max_new_tokens=5, batch_size=2)[0][
        "exact_match"
    ] == pytest.approx(1 / 2)


def test_generation_metrics_needs_a_reference() -> None:
    examples = [Example([Message("user", "hi")], origin="val.jsonl:7")]
    with pytest.raises(DataError, match=r"val\.jsonl:7.*no assistant message"):
        generation_metrics(None, None, examples, max_examples=5, max_new_tokens=4, batch_size=1)


def render_text(table) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_metrics_table_two_columns_with_delta() -> None:
    base = {"val_loss": 2.345678, "val_ppl": 10.44, "exact_match": 0.05, "token_f1": 0.125}
    tuned = {"val_loss": 1.2, "val_ppl": 3.3201, "exact_match": 0.875, "token_f1": 0.9}
    text = render_text(metrics_table({"base": base, "tuned": tuned}, title="Validation"))
    assert "Validation" in text and "Δ" in text
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert lines["val_loss"].split("│")[2].strip() == "2.346"
    assert lines["val_loss"].split("│")[4].strip() == "-1.15"
    assert lines["val_ppl"].split("│")[2].strip() == "10.44"
    assert lines["exact_match"].split("│")[2].strip() == "5.0%"
    assert lines["exact_match"].split("│")[3].strip() == "87.5%"
    assert lines["exact_match"].split("│")[4].strip() == "+82.5 pp"
    assert lines["token_f1"].split("│")[4].strip() == "+77.5 pp"


def test_metrics_table_one_and_three_columns_and_missing_values() -> None:
    one = render_text(metrics_table({"tuned": {"exact_match": 0.5}}, title="t"))
    assert "Δ" not in one and "50.0%" in one
    three = render_text(metrics_table({"a": {"exact_match": 0.5}, "b": {}, "c": {"val_loss": 0.01234}}, title="t"))
    assert "Δ" not in three and "—" in three and "0.01234" in three
