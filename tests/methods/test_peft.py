"""The peft family (DoRA, PiSSA/OLoRA, rank patterns, IA3, prefix, prompt/P-tuning): hand-computed trainable
counts on the tiny Llama, training lowers the loss, and the saved adapter reloads to identical logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from tests.helpers import tiny_config
from tests.methods.test_methods import LORA_R4, TOTAL
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.methods.base import trainable_parameters
from tunelab.methods.registry import METHOD_CONFIGS, METHODS
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model, load_tokenizer
from tunelab.recipes.run import run_training

# Tiny Llama (see test_methods.py): hidden 48, key/value width 24 (2 heads x 12), MLP 96, 2 layers.
OUT_FEATURES = 48 + 24 + 24 + 48 + 96 + 96 + 48  # q k v o gate up down: DoRA's magnitude vectors, per layer = 384
RANK_PATTERN = 2 * (4 * ((48 + 48) * 2 + (48 + 24) * 2 + (48 + 96) * 2) + 8 * (96 + 48))  # down_proj at r=8: 7,296
IA3 = 2 * (24 + 24 + 96)  # k, v scale their 24 outputs; down_proj (feed-forward) scales its 96 inputs: 288
PREFIX_8 = 8 * 2 * 2 * 24  # virtual tokens x (key, value) x layers x key/value width: 768
PREFIX_4_MLP16 = 4 * 24 + (24 * 16 + 16) + (16 * 2 * 2 * 24 + 2 * 2 * 24)  # embedding, Linear 24->16, 16->96: 2,128
PROMPT_8 = 8 * 48  # one hidden-size vector per virtual token: 384
PTUNING_4_MLP16 = 4 * 48 + (48 * 16 + 16) + (16 * 16 + 16) + (16 * 48 + 48)  # embedding + 3-layer MLP: 2,064


def _apply(model_dir: Path, name: str, **fields):
    return METHODS[name].apply_(load_model(str(model_dir)), METHOD_CONFIGS[name](**fields))


@pytest.mark.parametrize(
    ("name", "fields", "expected"),
    [
        ("dora", {"r": 4}, LORA_R4 + 2 * OUT_FEATURES),
        ("lora", {"r": 4, "rank_pattern": {"down_proj": 8}}, RANK_PATTERN),
        ("lora", {"r": 4, "init": "pissa"}, LORA_R4),
        ("lora", {"r": 4, "init": "olora"}, LORA_R4),
        ("ia3", {}, IA3),
        ("ia3", {"target_modules": ["q_proj"]}, 2 * 48),
        ("prefix", {"num_virtual_tokens": 8}, PREFIX_8),
        ("prefix", {"num_virtual_tokens": 4, "projection": True, "projection_hidden": 16}, PREFIX_4_MLP16),
        ("prompt", {"num_virtual_tokens": 8}, PROMPT_8),
        ("prompt", {"num_virtual_tokens": 4, "encoder": "mlp", "encoder_hidden": 16}, PTUNING_4_MLP16),
    ],
)
def test_trainable_counts(tiny_model_dir: Path, name: str, fields: dict, expected: int) -> None:
    trainable, total = trainable_parameters(_apply(tiny_model_dir, name, **fields))
    assert trainable == expected
    assert total == TOTAL + expected


def test_pissa_start_is_the_base_model(tiny_model_dir: Path) -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    base = load_model(str(tiny_model_dir))(ids).logits
    model = _apply(tiny_model_dir, "lora", r=4, init="pissa")
    a = dict(model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    assert a.abs().sum() > 0, "PiSSA starts A from singular vectors, not zeros"
    torch.testing.assert_close(model(ids).logits, base, atol=1e-5, rtol=1e-4)


def test_pissa_conversion_matches_peft(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Our in-memory conversion writes the same tensors as peft's own (which needs the initial adapter on disk)."""
    model = _apply(tiny_model_dir, "lora", r=4, init="pissa", rank_pattern={"down_proj": 2})
    initial = tmp_path / "initial"
    model.save_pretrained(initial)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)  # stands in for training
    METHODS["lora"].save(model, tmp_path / "ours")
    model.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(initial))
    ours = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key])
    a = ours["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert a.shape == (8, 48), "rank 4 becomes 8"
    assert ours["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, 96)
    assert len(get_peft_model_state_dict(model)) == len(ours)


# LR and pass margin per method: the tiny model is random, so methods with few parameters (IA3, virtual tokens)
# move the loss less in 3 epochs; prompt tuning is known to need a large LR.
TRAIN_CASES = [
    ("dora", ["method.r=4"], 0.5),
    ("lora", ["method.r=4", "method.init=pissa", "method.rslora=true", "method.rank_pattern={down_proj: 8}",
              "method.alpha_pattern={q_proj: 16}"], 0.5),
    ("lora", ["method.r=4", "method.init=olora"], 0.5),
    ("ia3", ["training.learning_rate=0.1"], 0.2),
    ("prefix", ["method.num_virtual_tokens=8", "training.learning_rate=0.1"], 0.2),
]  # fmt: skip
PROMPT_CASES = [
    ("prompt", ["method.num_virtual_tokens=8", "training.learning_rate=0.3"], 0.05),
    ("prompt", ["method.num_virtual_tokens=4", "method.encoder=mlp", "method.encoder_hidden=16",
                "training.learning_rate=0.03"], 0.05),
]  # fmt: skip


def _train_and_reload(tmp_path: Path, model_dir: Path, name: str, overrides: list[str], margin: float) -> None:
    cfg = tiny_config(tmp_path, model_dir, f"method={name}", "eval.generate=false", *overrides)
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - margin
    model, tokenizer = load_trained(str(result.run_dir))
    ids = tokenizer("what is color of cat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reloaded = model(ids).logits
        torch.testing.assert_close(reloaded, result.model(ids).logits, atol=2e-5, rtol=1e-4)
        base = load_model(str(model_dir))(ids).logits
    assert not torch.allclose(base, reloaded[:, -ids.shape[1] :], atol=1e-3), "the trained result must differ"


@pytest.mark.parametrize(("name", "overrides", "margin"), TRAIN_CASES)
def test_train_lowers_loss_and_adapter_reloads(
    tmp_path: Path, tiny_model_dir: Path, name: str, overrides: list[str], margin: float
) -> None:
    _train_and_reload(tmp_path, tiny_model_dir, name, overrides, margin)


@pytest.mark.parametrize(("name", "overrides", "margin"), PROMPT_CASES)
def test_prompt_tuning_trains_and_reloads(
    tmp_path: Path, tiny_model_dir: Path, name: str, overrides: list[str], margin: float
) -> None:
    _train_and_reload(tmp_path, tiny_model_dir, name, overrides, margin)


def test_prompt_init_text_starts_from_the_text_embeddings(tiny_model_dir: Path) -> None:
    model = _apply(tiny_model_dir, "prompt", num_virtual_tokens=3, init_text="red cat")
    embedding = load_model(str(tiny_model_dir)).get_input_embeddings().weight
    ids = load_tokenizer(str(tiny_model_dir))("red cat")["input_ids"]
    expected = embedding[(ids * 3)[:3]]  # the text's tokens, repeated to the prompt length
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected)


@pytest.mark.parametrize(
    ("method", "fields", "message"),
    [
        ("lora", "r=4 dora=true init=pissa", "dora cannot be combined with init=pissa"),
        ("dora", "init=olora", "dora cannot be combined with init=olora"),
        ("ia3", "target_modules=[q_proj] feedforward_modules=[down_proj]", "are not in target_modules"),
        ("prompt", "encoder=lstm init_text=hello", "init_text works only with encoder=none"),
    ],
)
def test_impossible_options_are_config_errors(tmp_path: Path, method: str, fields: str, message: str) -> None:
    overrides = [f"method.{f}" for f in fields.split()]
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.train=x.jsonl", f"method={method}", *overrides])


def test_misspelt_target_module_names_the_choices(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"'q_prj' names no module.*Did you mean 'q_proj'"):
        _apply(tiny_model_dir, "lora", target_modules=["q_prj"])
    with pytest.raises(ConfigError, match=r"rank_pattern: 'layers.9.q_proj' matches no module"):
        _apply(tiny_model_dir, "lora", rank_pattern={"layers.9.q_proj": 2})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_qlora_on_cpu_says_it_is_gpu_only(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"method qlora is GPU-only.*use method lora"):
        _apply(tiny_model_dir, "qlora", r=4)


@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_adapters_run_under_the_loops_bf16_no_cast_context(tiny_model_dir: Path, name: str) -> None:
    from peft.helpers import disable_input_dtype_casting

    model = _apply(tiny_model_dir, name)
    ids = torch.tensor([[5, 6, 7]])
    with disable_input_dtype_casting(model), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(ids).logits.shape == (1, 3, 300)
