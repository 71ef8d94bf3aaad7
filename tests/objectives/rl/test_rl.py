"""Online RL: advantages, the clipped surrogate and the KL estimate by hand; reward functions; GRPO and PPO on the
tiny model with a Python reward the random model can improve on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from tests.objectives.test_train import preference_config
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.models.load import load_tokenizer
from tunelab.objectives.rl.grpo import clipped_policy_loss, k3_kl
from tunelab.objectives.rl.rewards import RewardModelScorer, RewardSpec, Sample, combined
from tunelab.objectives.rl.rollout import PromptItem, collate_prompts, gae, group_advantages, sample
from tunelab.recipes.run import run_training


def shortness(completions: list[str], samples: list) -> list[float]:
    """A dense reward for tests: shorter completions are better."""
    return [-len(c) / 10 for c in completions]


def longness(completions: list[str], samples: list) -> list[float]:
    """A dense reward for tests: longer completions are better (a random model's greedy answer is empty)."""
    return [len(c) / 10 for c in completions]


def test_group_advantages() -> None:
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])  # two groups of two
    # Group 1: mean 0.5, sample std √0.5 = 0.7071; group 2 has no spread, so no advantage.
    scaled = group_advantages(rewards, 2)
    torch.testing.assert_close(scaled, torch.tensor([0.5 / (0.70710678 + 1e-4), -0.5 / (0.70710678 + 1e-4), 0, 0]))
    torch.testing.assert_close(group_advantages(rewards, 2, scale=False), torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_gae_by_hand() -> None:
    # One completion of 3 tokens after a prompt token; reward 1 at the end, V = 0.5 everywhere; γ = 0.9, λ = 0.8.
    # δ3 = 1 - 0.5 = 0.5;  δ2 = 0.9·0.5 - 0.5 = -0.05;  δ1 = -0.05
    # A3 = 0.5;  A2 = -0.05 + 0.72·0.5 = 0.31;  A1 = -0.05 + 0.72·0.31 = 0.1732
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    advantages = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.1732, 0.31, 0.5, 0.0]]))


def test_clipped_surrogate_and_k3_kl() -> None:
    logps, old = torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.4, 0.4]))  # ratio 1.25
    # A = +1: min(1.25, 1.2) → -1.2;  A = -1: min(-1.25, -1.2) = -1.25 → +1.25
    torch.testing.assert_close(
        clipped_policy_loss(logps, old, torch.tensor([1.0, -1.0]), 0.2), torch.tensor([-1.2, 1.25])
    )
    # π_ref/π = 0.5: 0.5 - ln 0.5 - 1 = 0.1931472
    kl = k3_kl(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])))
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)


def test_reward_functions() -> None:
    specs = [
        RewardSpec(name="exact_match"),
        RewardSpec(name="regex", pattern=r"\d+", weight=0.5),
        RewardSpec(name="json_valid", weight=0.25),
        RewardSpec(name="length", target=4, weight=2.0),
        RewardSpec(name="contains", weight=0.125),
    ]
    score = combined(specs)
    samples = [Sample("q", "Blue"), Sample("q", "42"), Sample("q", "red")]
    # " blue ": exact (1) + length 1-|6-4|/4 = 0.5 → 1 + 2·0.5 = 2, + contains 0.125
    # "42": exact 1, regex 0.5, JSON 0.25, length 0.5 → 1 + 0.5 + 0.25 + 1 + 0.125 (contains)
    # '{"a": 1}': regex 0.5, JSON 0.25, length 1-|8-4|/4 = 0 → 0.75
    got = score([" blue ", "42", '{"a": 1}'], samples)
    torch.testing.assert_close(got, torch.tensor([2.125, 2.875, 0.75]))
    custom = combined([RewardSpec(name="python", function="tests.objectives.rl.test_rl:shortness")])
    torch.testing.assert_close(custom(["abcde"], samples[:1]), torch.tensor([-0.5]))
    with pytest.raises(ConfigError, match="cannot be imported"):
        combined([RewardSpec(name="python", function="tests.objectives.rl.test_rl:nothing")])


def test_rl_config_needs_a_reward() -> None:
    with pytest.raises(ConfigError, match="reward_model"):
        load_config(None, ["data.train=x.jsonl", "objective=grpo"])
    with pytest.raises(ConfigError, match="needs `pattern`"):
        load_config(None, ["data.train=x.jsonl", "objective=grpo", "objective.rewards=[{name: regex}]"])


LONGNESS = f"{__name__}:longness"


def _rl(tmp_path: Path, model_dir: Path, *overrides: str, name: str):
    cfg = tiny_config(
        tmp_path, model_dir, f"objective={name}", f"objective.rewards=[{{name: python, function: '{LONGNESS}'}}]",
        "objective.max_new_tokens=8", "training.batch_size=4", "training.learning_rate=1e-2", "training.max_steps=12",
        "eval.generate=false", *overrides, name=name,
    )  # fmt: skip
    return run_training(cfg)


def test_grpo_raises_the_reward_on_held_out_prompts(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = _rl(tmp_path, tiny_model_dir, "objective.num_generations=4", name="grpo")
    assert result.baseline["val_reward"] < 0.2
    assert result.final["val_reward"] > result.baseline["val_reward"] + 0.3


def test_ppo_raises_the_reward_and_saves_the_policy_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = _rl(tmp_path, tiny_model_dir, "objective.updates_per_rollout=2", name="ppo")
    assert result.final["val_reward"] > result.baseline["val_reward"] + 0.3
    saved = (result.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert b"value_head" not in saved
    # The result's body is the policy a user generates with; the model around it also holds the value head.
    assert result.body is not result.model and hasattr(result.body, "generate")
    assert not any("value_head" in name for name, _ in result.body.named_parameters())


def test_ppo_trains_under_bf16_autocast(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The value head's matmul comes out of autocast in bf16; the rollout's values are kept in fp32 all the same."""
    result = _rl(tmp_path, tiny_model_dir, "training.precision=bf16", "training.max_steps=2", name="ppo")
    assert result.final["steps"] == 2 and (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_grpo_on_a_trained_reward_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A reward model trained to prefer 'yes' to 'no' scores rollouts; GRPO on its score alone raises it."""
    rm = run_training(preference_config(tmp_path, tiny_model_dir, "objective=reward", "training.learning_rate=1e-2",
                                        name="rm"))  # fmt: skip
    tokenizer = load_tokenizer(str(tiny_model_dir))
    scorer = RewardModelScorer(str(rm.run_dir), torch.device("cpu"), tokenizer.get_vocab())
    prompt = tokenizer("<|im_start|>user\nis the cat red<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    rows = [tokenizer("yes<|im_end|>")["input_ids"], tokenizer("no<|im_end|>")["input_ids"]]
    ids = torch.tensor([prompt + a for a in rows])
    yes, no = scorer(ids, torch.ones_like(ids))
    assert yes > no, "the scorer reads the trained head: the preferred answer scores higher"
    # A rollout scores its prompt + completion rows exactly as the reward model's own forward does.
    batch = collate_prompts([PromptItem(prompt, 0), PromptItem(prompt[2:], 1)], tokenizer.pad_token_id)
    rollout = sample(rm.model.model, batch, 2, 4, 1.0, 1.0, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                     tokenizer)  # fmt: skip
    got = scorer(rollout.batch["input_ids"], rollout.batch["attention_mask"])
    with torch.no_grad():
        want = rm.model(rollout.batch["input_ids"], rollout.batch["attention_mask"]).squeeze(-1)
    torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="another tokenizer"):
        RewardModelScorer(str(rm.run_dir), torch.device("cpu"), {"other": 0})

    cfg = preference_config(
        tmp_path, tiny_model_dir, "objective=grpo", f"objective.reward_model={rm.run_dir}",
        "objective.max_new_tokens=4", "objective.num_generations=4", "training.batch_size=4",
        "training.learning_rate=1e-2", "training.max_steps=10", name="grpo_rm",
    )  # fmt: skip
    result = run_training(cfg)
    assert result.final["val_reward"] > result.baseline["val_reward"] + 0.1


def test_a_cut_off_completion_pays_the_truncated_penalty(tiny_model_dir: Path) -> None:
    """'42' followed by text that was never generated must not earn the reward of a finished '42'."""
    from tunelab.models.load import load_model
    from tunelab.objectives.rl.grpo import GRPOConfig, RLContext, rewards_of
    from tunelab.objectives.rl.rollout import Rollout

    specs = [RewardSpec(name="regex", pattern=r"^\d+$")]
    ctx = RLContext(cfg=GRPOConfig(rewards=specs, truncated_penalty=2.0), tokenizer=None, samples=[Sample("q", "")],
                    score_text=combined(specs), reward_model=None, reference=None, stops=[])  # fmt: skip
    rollout = Rollout(batch={}, completions=["42", "42", "x"], group=torch.tensor([0, 0, 0]),
                      finished=torch.tensor([True, False, False]))  # fmt: skip
    # regex 1, 1, 0; the cut-off ones pay 2
    torch.testing.assert_close(rewards_of(ctx, rollout, torch.tensor([0])), torch.tensor([1.0, -1.0, -2.0]))
    ctx.cfg = GRPOConfig(rewards=specs)  # default: scored like any other
    torch.testing.assert_close(rewards_of(ctx, rollout, torch.tensor([0])), torch.tensor([1.0, 1.0, 0.0]))

    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    batch = collate_prompts([PromptItem(tokenizer("the cat")["input_ids"], 0)], tokenizer.pad_token_id)
    every_token = list(range(len(tokenizer)))
    ended = sample(model, batch, 2, 5, 1.0, 1.0, every_token, tokenizer.pad_token_id, tokenizer)
    assert ended.finished.tolist() == [True, True] and ended.batch["labels"].ne(-100).sum().item() == 2
    never = [tokenizer.pad_token_id]  # the random model may pick it, so only check the flag agrees with the tokens
    cut = sample(model, batch, 4, 3, 1.0, 1.0, never, tokenizer.pad_token_id, tokenizer)
    answers = cut.batch["labels"].ne(-100).sum(1)
    assert cut.finished.tolist() == [bool(n < 3 or lab[lab.ne(-100)][-1] == never[0]) for n, lab in
                                     zip(answers.tolist(), cut.batch["labels"], strict=True)]  # fmt: skip
