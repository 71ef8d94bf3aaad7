"""Ensembles: logit/probability averaging and votes by hand, fitted weights against a hand-solved optimum, and
greedy generation of an ensemble of tiny models (and of adapters on one base) matching transformers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tests.tiny import build_tiny_llama
from tunelab.core.types import Message
from tunelab.export.ensemble.combine import combine_logits, majority_vote, normalized_weights
from tunelab.export.ensemble.model import EnsembleModel
from tunelab.export.ensemble.weights import fit_mixture_weights, fit_weights, member_target_logprobs
from tunelab.models.generate import generate_answers
from tunelab.models.load import load_tokenizer


def test_combine_logits_and_probs_by_hand() -> None:
    z1, z2 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    w = normalized_weights([3.0, 1.0], 2)  # -> [0.75, 0.25]
    assert combine_logits([z1, z2], w, "logits").tolist() == pytest.approx([1.5, 0.25])
    p1 = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]  # [0.8808, 0.1192]
    p2 = [1 / (1 + math.e), math.e / (1 + math.e)]  # [0.2689, 0.7311]
    mix = [0.75 * a + 0.25 * b for a, b in zip(p1, p2, strict=True)]  # [0.7278, 0.2722]
    assert combine_logits([z1, z2], w, "probs").exp().tolist() == pytest.approx(mix, rel=1e-5)
    one_hot = combine_logits([z1, z2], normalized_weights([1, 0], 2), "probs")
    assert one_hot.tolist() == pytest.approx(torch.log_softmax(z1, -1).tolist()), "weight 0 drops a member"
    with pytest.raises(ValueError, match="non-negative"):
        normalized_weights([1, -1], 2)


def test_majority_vote_weights_and_ties() -> None:
    preds = [["a", "b", "x"], ["b", "b", "y"], ["b", "a", "z"]]
    assert majority_vote(preds) == ["b", "b", "x"], "x/y/z tie: the first member's label wins"
    assert majority_vote(preds, [0.6, 0.2, 0.2]) == ["a", "b", "x"], "0.6 for a beats 0.4 for b"
    assert majority_vote([["a"], ["b"]], [1, 1]) == ["a"]


def test_fitted_mixture_weights_match_the_hand_optimum() -> None:
    # Two examples: p_A(y) = 0.8, 0.2 and p_B(y) = 0.2, 0.6. NLL(w) = -½[log(0.2 + 0.6w) + log(0.6 - 0.4w)]
    # dNLL/dw = 0 <=> 0.6(0.6 - 0.4w) = 0.4(0.2 + 0.6w) <=> w = 0.28 / 0.48 = 7/12.
    lp = torch.tensor([[0.8, 0.2], [0.2, 0.6]]).log()
    w = fit_mixture_weights(lp)
    assert w[0].item() == pytest.approx(7 / 12, abs=1e-4) and w.sum().item() == pytest.approx(1.0)
    # The same optimum through full logits: members whose softmax puts those probabilities on the target.
    logits = torch.stack([torch.tensor([[0.8, 0.2], [0.8, 0.2]]), torch.tensor([[0.2, 0.8], [0.4, 0.6]])]).log()
    targets = torch.tensor([0, 1])
    assert fit_weights(logits, targets, "probs")[0].item() == pytest.approx(7 / 12, abs=1e-4)
    # Logit averaging: a member that is always right and sure takes (almost) all the weight from a noisy one.
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (64,), generator=gen)
    good = 4 * torch.nn.functional.one_hot(targets, 4).float()
    noise = 2 * torch.randn(64, 4, generator=gen)
    assert fit_weights(torch.stack([good, noise]), targets, "logits")[0].item() > 0.9


def _prompts() -> list[list[Message]]:
    return [[Message("user", "what is color of cat")], [Message("user", "the dog sat on a red mat and ran")]]


def test_single_member_ensemble_generates_what_the_model_generates(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    plain = generate_answers(model, tokenizer, _prompts(), max_new_tokens=6, show_progress=False)
    for combine in ("probs", "logits"):
        ensemble = EnsembleModel([model], combine=combine)
        assert generate_answers(ensemble, tokenizer, _prompts(), max_new_tokens=6, show_progress=False) == plain


def test_two_model_ensemble_follows_the_combined_distribution(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    b = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "other", seed=1)).eval()
    ensemble = EnsembleModel([a, b], weights=[0.3, 0.7], combine="probs")
    ids = torch.tensor([[0, 0, 5, 17, 42], [3, 8, 9, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = ensemble.generate(ids, mask, max_new_tokens=3, eos_token_id=[2], pad_token_id=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :5], ids)
    with torch.no_grad():  # greedy steps recomputed without caches, from the full sequences
        for step in range(3):
            seq, m = out[:, : 5 + step], torch.cat([mask, torch.ones(2, step, dtype=mask.dtype)], 1)
            pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
            la = a(input_ids=seq, attention_mask=m, position_ids=pos).logits[:, -1].softmax(-1)
            lb = b(input_ids=seq, attention_mask=m, position_ids=pos).logits[:, -1].softmax(-1)
            expected = (0.3 * la + 0.7 * lb).argmax(-1)
            finished = (out[:, 5 : 5 + step] == 2).any(1)
            assert torch.equal(out[:, 5 + step][~finished], expected[~finished])


def test_adapter_ensemble_on_one_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    folders = []
    for seed in (1, 2):
        peft_model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        peft_model.save_pretrained(tmp_path / f"a{seed}")
        folders.append(tmp_path / f"a{seed}")
    ensemble = EnsembleModel.from_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folders, [0.0, 1.0])
    alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folders[1]).eval()
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        expected = torch.log_softmax(alone(input_ids=ids).logits, -1)
        assert torch.allclose(ensemble(ids).logits, expected, atol=1e-5), "weight 0 on adapter 0: adapter 1 alone"
    labels = ids.clone()
    labels[:, :2] = -100
    lp = member_target_logprobs(
        ensemble, [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]
    )
    assert lp.shape == (2, 2) and torch.allclose(lp[1], expected[0, 1:3].gather(-1, ids[0, 2:4, None]).squeeze(-1))
