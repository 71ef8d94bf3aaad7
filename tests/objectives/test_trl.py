"""Parity with TRL (a test-only dependency): the same model and the same token batch give the same loss.

TRL's trainers tokenize and collate; we take their batch, turn it into ours (labels = the completion tokens) and
run our objective on it, so the comparison covers our sequence log-probs as well as the loss formula.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.data.tokenize import IGNORE
from tunelab.objectives.dpo import DPOConfig, dpo_loss
from tunelab.objectives.kto import kto_losses
from tunelab.objectives.lm import sequence_logps
from tunelab.objectives.orpo import odds_ratio_terms
from tunelab.objectives.reference import Reference
from tunelab.objectives.reward import bradley_terry_losses

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

PROMPTS = ["what is color of cat", "what is color of sky", "two dog sat", "is the mat red"]
GOOD = ["red", "blue", "no", "yes the mat is red"]
BAD = ["blue dog", "red one two", "yes yes", "no"]


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path):
    """A policy nudged away from its reference (so the losses are not all log 2), the reference, the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference, tokenizer


def _args(cls, tmp_path: Path, **kwargs):
    common = {"output_dir": str(tmp_path), "report_to": [], "use_cpu": True, "bf16": False}
    return cls(**common, per_device_train_batch_size=4, **kwargs)


def _chat(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


@pytest.mark.parametrize(
    ("loss_type", "smoothing"), [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.2)], ids=["sigmoid", "ipo", "robust"]
)
def test_dpo_matches_trl(models, tmp_path: Path, loss_type: str, smoothing: float) -> None:
    policy, reference, tokenizer = models
    rows = [
        {"prompt": _chat("user", p), "chosen": _chat("assistant", g), "rejected": _chat("assistant", b)}
        for p, g, b in zip(PROMPTS, GOOD, BAD, strict=True)
    ]
    args = _args(trl.DPOConfig, tmp_path, beta=0.3, loss_type=[loss_type], label_smoothing=smoothing)
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, dict(batch))
        ours = dpo_loss(policy, _ours(batch), (DPOConfig(beta=0.3, loss_type=loss_type, label_smoothing=smoothing),
                                               Reference(reference)))  # fmt: skip
    assert abs(float(theirs) - 0.6931) > 1e-3, "the policy must differ from the reference for a meaningful test"
    torch.testing.assert_close(ours.loss_sum / ours.count, theirs, rtol=1e-5, atol=1e-6)


def test_kto_matches_trl(models, tmp_path: Path) -> None:
    policy, reference, tokenizer = models
    rows = [
        {"prompt": _chat("user", p), "completion": _chat("assistant", a), "label": good}
        for p, g, b in zip(PROMPTS, GOOD, BAD, strict=True)
        for a, good in ((g, True), (b, False))
    ]
    args = _args(trl.KTOConfig, tmp_path, beta=0.2, desirable_weight=1.0, undesirable_weight=1.5)
    trainer = trl.KTOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=datasets.Dataset.from_list(rows[:4]),
        processing_class=tokenizer,
    )  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, dict(batch))
        main = _ours(batch)
        mismatched = _ours({"input_ids": batch["KL_input_ids"], "attention_mask": batch["KL_attention_mask"],
                            "completion_mask": batch["KL_completion_mask"]})  # fmt: skip
        losses = kto_losses(
            sequence_logps(policy, main)[0], sequence_logps(reference, main)[0],
            sequence_logps(policy, mismatched)[0], sequence_logps(reference, mismatched)[0],
            batch["label"], beta=0.2, desirable_weight=1.0, undesirable_weight=1.5,
        )  # fmt: skip
    torch.testing.assert_close(losses.mean(), theirs, rtol=1e-5, atol=1e-6)


def test_reward_loss_matches_trl(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [
        {"prompt": _chat("user", p), "chosen": _chat("assistant", g), "rejected": _chat("assistant", b)}
        for p, g, b in zip(PROMPTS, GOOD, BAD, strict=True)
    ]
    args = _args(trl.RewardConfig, tmp_path, center_rewards_coefficient=0.05)
    trainer = trl.RewardTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        theirs, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
    torch.testing.assert_close(bradley_terry_losses(chosen, rejected, 0.05).mean(), theirs)


def test_orpo_odds_ratio_matches_trl() -> None:
    from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = torch.tensor([-0.3, -1.2, -2.5, -0.01]), torch.tensor([-0.9, -0.4, -2.6, -3.0])
    stub = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs, *_ = ORPOTrainer.odds_ratio_loss(stub, chosen, rejected)
    torch.testing.assert_close(0.25 * odds_ratio_terms(chosen, rejected), theirs)


@pytest.mark.parametrize(("beta", "temperature"), [(0.5, 1.0), (0.1, 2.0), (0.9, 0.7)])
def test_generalised_jsd_matches_trl_gkd(beta: float, temperature: float) -> None:
    from trl.experimental.gkd import GKDTrainer

    from tunelab.objectives.distill.losses import distill_terms

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, IGNORE, 3, 4], [IGNORE, IGNORE, 5, 6, 7]])
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    keep = labels != IGNORE
    ours = distill_terms(student[keep], teacher[keep], "jsd", temperature, beta) / temperature**2
    # TRL's batchmean divides the masked sum by the number of kept positions; GKD does not scale by τ².
    torch.testing.assert_close(ours.mean(), theirs)
    forward = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=0.0, temperature=temperature)
    ours_forward = distill_terms(student[keep], teacher[keep], "forward_kl", temperature) / temperature**2
    torch.testing.assert_close(ours_forward.mean(), forward)
    reverse = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=1.0, temperature=temperature)
    ours_reverse = distill_terms(student[keep], teacher[keep], "reverse_kl", temperature) / temperature**2
    torch.testing.assert_close(ours_reverse.mean(), reverse)


def _ours(batch: dict) -> dict[str, torch.Tensor]:
    """TRL's batch (input ids + completion mask) as ours: labels are the completion tokens, IGNORE elsewhere."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
