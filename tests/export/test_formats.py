"""HF and PEFT exports: what tunelab writes loads in transformers and peft with the trained model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import tiny_config
from tunelab.export.errors import ExportError
from tunelab.export.formats import export
from tunelab.recipes.run import run_training

IDS = torch.tensor([[5, 17, 42, 99, 3]])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    tmp = tmp_path_factory.mktemp("export")
    return run_training(tiny_config(tmp, tiny_model_dir, "method.r=4", "training.epochs=1", "eval.generate=false"))


def test_hf_export_is_sharded_safetensors_with_tokenizer(lora_run, tmp_path: Path) -> None:
    # A tiny shard size forces the sharded layout (index + several files) that large models get.
    from tunelab.export.formats import export_hf

    out = export_hf(str(lora_run.run_dir), tmp_path / "hf", max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # what vLLM's loader dispatches on

    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    torch.testing.assert_close(merged(IDS).logits, lora_run.model(IDS).logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in name for name in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template


def test_hf_export_in_bf16_halves_the_weights(lora_run, tmp_path: Path) -> None:
    out = export(str(lora_run.run_dir), "hf", tmp_path / "bf16", dtype="bf16")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(model.float()(IDS).logits, lora_run.model(IDS).logits, rtol=0, atol=5e-2)


def test_peft_export_loads_in_peft(lora_run, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = export(str(lora_run.run_dir), "peft", tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out).eval()
    torch.testing.assert_close(model(IDS).logits, lora_run.model(IDS).logits, rtol=1e-5, atol=1e-5)


def test_peft_export_needs_a_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a tunelab run folder"):
        export(str(tiny_model_dir), "peft", tmp_path / "x")
    with pytest.raises(ExportError, match="Unknown export format 'onnx'"):
        export(str(tiny_model_dir), "onnx", tmp_path / "x")  # type: ignore[arg-type]


def test_hf_export_of_a_plain_model_source(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = export(str(tiny_model_dir), "hf", tmp_path / "copy")
    a = AutoModelForCausalLM.from_pretrained(out).eval()
    b = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.testing.assert_close(a(IDS).logits, b(IDS).logits)
