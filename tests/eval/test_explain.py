"""Token attributions on a tiny model: integrated gradients' completeness, input x gradient against autograd by
hand, attention rollout's rows, a classifier's label, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.cli.main import main
from tunelab.core.errors import ConfigError, DataError
from tunelab.core.types import Message
from tunelab.eval.explain import attention_rollout, baseline_token, explain_answer, explain_label
from tunelab.models.chat import prompt_text
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.heads import attach_head_

PROMPT, ANSWER = "what is color of sky", "blue sky"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


def answer_log_prob(model, tokenizer, prompt: str, answer: str) -> float:
    """log p(answer | prompt) by a plain forward pass, for checking the explained score."""
    prompt_ids = tokenizer(prompt_text(tokenizer, [Message("user", prompt)]), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1], -1)
    return float(logp.gather(-1, torch.tensor(answer_ids)[:, None]).sum())


def test_integrated_gradients_are_complete(tiny) -> None:
    model, tokenizer = tiny
    result = explain_answer(model, tokenizer, PROMPT, "ig", target=ANSWER, steps=64)
    assert result.score == pytest.approx(answer_log_prob(model, tokenizer, PROMPT, ANSWER), abs=1e-4)
    assert result.baseline_score is not None and result.delta is not None
    difference = result.score - result.baseline_score
    assert abs(difference) > 0.05  # a real difference to account for, not 0 = 0
    assert sum(result.scores) == pytest.approx(difference, abs=1e-3)
    assert result.delta < 1e-3
    # The template's tokens are the same in the baseline, so they get no credit; the prompt's words do.
    template = [s for s, p in zip(result.scores, result.parts, strict=True) if p == "template"]
    assert template and all(s == 0.0 for s in template)
    assert "".join(t for t, p in zip(result.tokens, result.parts, strict=True) if p == "prompt") == PROMPT


def test_baseline_token_is_not_a_zero_embedding(tiny) -> None:
    model, tokenizer = tiny
    table = model.get_input_embeddings().weight.detach()
    assert float(table[tokenizer.pad_token_id].norm()) == 0.0  # the tiny model's padding_idx row
    token = baseline_token(model, tokenizer)
    assert token not in tokenizer.all_special_ids and float(table[token].norm()) > 0


def test_per_token_rows_add_up_to_the_summed_attribution(tiny) -> None:
    model, tokenizer = tiny
    result = explain_answer(model, tokenizer, PROMPT, "ig", target=ANSWER, per_token=True, steps=32)
    assert len(result.per_target) == len(result.target_tokens) >= 2
    for k, column in enumerate(zip(*result.per_target, strict=True)):
        assert sum(column) == pytest.approx(result.scores[k], abs=1e-6)
    # An answer token cannot be explained by the tokens after it (causal attention): they get nothing.
    first_answer = result.parts.index("answer")
    assert all(v == 0.0 for v in result.per_target[0][first_answer:])


def test_input_x_gradient_matches_autograd(tiny) -> None:
    model, tokenizer = tiny
    result = explain_answer(model, tokenizer, PROMPT, "ixg", target=ANSWER)
    prompt_ids = tokenizer(prompt_text(tokenizer, [Message("user", PROMPT)]), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids[:-1]])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logp = torch.log_softmax(model(inputs_embeds=embeds).logits[0, len(prompt_ids) - 1 :], -1)
    logp.gather(-1, torch.tensor(answer_ids)[:, None]).sum().backward()
    expected = (embeds * embeds.grad)[0].sum(-1)
    assert torch.allclose(torch.tensor(result.scores), expected, atol=1e-5)


def test_attention_rollout_rows_are_distributions(tiny) -> None:
    model, tokenizer = tiny
    before = model.config._attn_implementation
    result = explain_answer(model, tokenizer, PROMPT, "rollout", target=ANSWER, per_token=True)
    assert model.config._attn_implementation == before  # eager only while the rollout runs
    ids = torch.tensor([tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]])
    matrix = attention_rollout(model, ids)
    assert torch.allclose(matrix.sum(-1), torch.ones(ids.shape[1]), atol=1e-5)
    assert torch.all(matrix.triu(1) == 0)  # no position draws on later ones
    assert matrix[0, 0] == pytest.approx(1.0)
    for row in result.per_target:
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    assert sum(result.scores) == pytest.approx(len(result.per_target), abs=1e-4)


def test_classifier_label_attributions(tiny) -> None:
    model, tokenizer = tiny
    torch.manual_seed(0)
    classifier = attach_head_(model, HeadConfig(num_labels=3, labels=["neg", "neutral", "pos"])).eval()
    result = explain_label(classifier, tokenizer, "the dog ran on the mat", "ig", target="pos", steps=64)
    assert result.kind == "label" and result.target == "pos"
    with torch.no_grad():
        ids = torch.tensor([tokenizer("the dog ran on the mat")["input_ids"]])
        expected = torch.log_softmax(classifier(ids, torch.ones_like(ids)), -1)[0, 2]
    assert result.score == pytest.approx(float(expected), abs=1e-5)
    assert result.baseline_score is not None
    assert sum(result.scores) == pytest.approx(result.score - result.baseline_score, abs=1e-3)
    assert result.steps == 64 and result.delta is not None and result.delta < 1e-3
    predicted = explain_label(classifier, tokenizer, "the dog ran on the mat", "ixg")
    assert predicted.target in {"neg", "neutral", "pos"}
    with pytest.raises(ConfigError, match="not a label of this classifier"):
        explain_label(classifier, tokenizer, "the dog", "ig", target="happy")


def test_prompt_over_the_context_is_refused(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(DataError, match="longer than the model's context"):
        explain_answer(model, tokenizer, " ".join(["cat"] * 400), "ixg", target="red")


def test_command_writes_the_heat_map(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    out = tmp_path / "heat.html"
    assert main(["explain", str(tiny_model_dir), "--prompt", PROMPT, "--target", ANSWER, "--per-token",
                 "--steps", "16", "--out", str(out)]) == 0  # fmt: skip
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "Per answer token" in page and "background:#" in page
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["method"] == "ig" and len(numbers["per_target"]) == len(numbers["target_tokens"])
    assert "convergence delta" in capsys.readouterr().out
    # Summed only (no per-token rows) for the two-token answer, by attention rollout.
    assert main(["explain", str(tiny_model_dir), "--prompt", PROMPT, "--target", ANSWER, "--method", "rollout",
                 "--out", str(tmp_path / "rollout.html")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "rollout.json").read_text())["per_target"] == []
    assert "most supporting:" in capsys.readouterr().out
    # The random model answers nothing: with no --target there is nothing to explain, said without a traceback.
    assert main(["explain", str(tiny_model_dir), "--prompt", PROMPT, "--out", str(out)]) == 2
    assert "give the answer to explain with --target" in capsys.readouterr().err
