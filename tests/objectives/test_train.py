"""Each preference objective trained through the one loop on the tiny model: the loss falls, held-out pairs are
ranked right, and what was saved loads back to the same outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from tunelab.config import load_config
from tunelab.core.errors import ConfigError, DataError
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.lm import sequence_logps
from tunelab.objectives.pairs import PairItem, collate_pairs
from tunelab.objectives.reference import Reference
from tunelab.recipes.run import run_training
from tunelab.train.metrics import read_metrics

WORDS = ["cat", "dog", "mat", "sky", "one", "two", "red", "blue"]


def write_preferences(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Prompts about a word; the preferred answer is always 'yes', the other 'no' (learnable in a few steps)."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(n):
            word = rng.choice(WORDS)
            fh.write(json.dumps({"prompt": f"is the {word} red", "chosen": "yes", "rejected": "no"}) + "\n")
    return path


def preference_config(tmp_path: Path, model_dir: Path, *overrides: str, name: str = "run"):
    data = write_preferences(tmp_path / "pref.jsonl")
    return load_config(
        None,
        [
            f"data.train={data}", f"model.source={model_dir}", f"output.dir={tmp_path / 'runs'}", f"output.name={name}",
            "training.precision=fp32", "training.learning_rate=3e-3", "training.batch_size=8", "training.max_steps=8",
            "training.log_every=1", "eval.generate=false", *overrides,
        ],
    )  # fmt: skip


def _train_losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


def _pairs(tokenizer) -> dict[str, torch.Tensor]:
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    items = [PairItem(ids("<|im_start|>user\nis the cat red<|im_end|>\n<|im_start|>assistant\n"), ids("yes<|im_end|>"),
                      ids("no<|im_end|>"))]  # fmt: skip
    return collate_pairs(items, tokenizer.pad_token_id)


def test_dpo_with_lora_uses_the_base_as_reference_and_learns_the_preference(tmp_path: Path, tiny_model_dir: Path):
    cfg = preference_config(tmp_path, tiny_model_dir, "objective=dpo", "objective.beta=0.5")
    result = run_training(cfg)
    assert result.baseline == {"val_loss": pytest.approx(0.6931472), "val_pair_acc": 0.0}  # policy == reference
    assert result.final["val_loss"] < 0.45 and result.final["val_pair_acc"] == 1.0
    losses = _train_losses(result.run_dir)
    assert losses[-1] < losses[0] - 0.2
    # The reference is the trained model with its adapter switched off: exactly the base model.
    batch = _pairs(load_tokenizer(str(tiny_model_dir)))
    with torch.no_grad():
        ref = Reference(None).logps(result.model, batch)
        base = sequence_logps(load_model(str(tiny_model_dir)), batch)[0]
        tuned = sequence_logps(result.model, batch)[0]
    torch.testing.assert_close(ref, base)
    assert tuned[0] - base[0] > tuned[1] - base[1], "the chosen answer's log-ratio must now be the larger"
    model, _ = load_trained(str(result.run_dir))
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, batch)[0], tuned)


def test_dpo_full_with_a_precomputed_frozen_copy(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = preference_config(
        tmp_path, tiny_model_dir, "method=full", "objective=dpo", "objective.beta=0.5", "objective.loss_type=ipo",
        "objective.precompute_reference=true", "training.learning_rate=1e-3",
    )  # fmt: skip
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.5
    assert result.final["val_pair_acc"] == 1.0


def test_adapter_disabled_reference_is_refused_when_the_method_trains_the_base(tmp_path, tiny_model_dir) -> None:
    overrides = ["method=full", "objective=dpo", "objective.reference=adapter_disabled"]
    cfg = preference_config(tmp_path, tiny_model_dir, *overrides)
    with pytest.raises(ConfigError, match="reference=copy"):
        run_training(cfg)


def test_orpo_and_kto_lower_their_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    orpo = run_training(preference_config(tmp_path, tiny_model_dir, "objective=orpo", name="orpo"))
    assert orpo.final["val_loss"] < orpo.baseline["val_loss"] - 0.5
    assert orpo.final["val_pair_acc"] == 1.0
    kto = run_training(preference_config(tmp_path, tiny_model_dir, "objective=kto", "objective.beta=0.5", name="kto"))
    assert kto.baseline["val_loss"] == pytest.approx(0.5)  # policy == reference: 1 - σ(0) for every example
    assert kto.final["val_loss"] < 0.45 and kto.final["val_acc"] == 1.0


def test_reward_model_ranks_held_out_pairs_and_its_head_reloads(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tunelab.objectives.classify.heads import load_head_

    cfg = preference_config(tmp_path, tiny_model_dir, "objective=reward", "training.learning_rate=1e-2")
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.3
    assert result.final["val_pair_acc"] == 1.0
    adapter = result.run_dir / "adapter"
    assert (adapter / "head.safetensors").is_file() and (adapter / "adapter_model.safetensors").is_file()
    body, _ = load_trained(str(result.run_dir))
    reloaded = load_head_(body, adapter)
    batch = _pairs(load_tokenizer(str(tiny_model_dir)))
    with torch.no_grad():
        rewards = reloaded(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
        torch.testing.assert_close(rewards, result.model(batch["input_ids"], batch["attention_mask"]).squeeze(-1))
    assert rewards[0] > rewards[1]


def test_preference_objective_on_chat_data_says_what_it_needs(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, "objective=dpo")
    with pytest.raises(DataError, match="preference pairs only"):
        run_training(cfg)
