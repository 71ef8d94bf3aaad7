"""What tunelab writes, other tools read: the adapter in peft, the merged folder in transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.helpers import tiny_config
from tunelab.export.formats import export
from tunelab.recipes.run import run_training


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    tmp = tmp_path_factory.mktemp("interop")
    return run_training(tiny_config(tmp, tiny_model_dir, "method.r=4", "training.epochs=1", "eval.generate=false"))


def test_adapter_loads_in_peft_with_same_logits(lora_run, tiny_model_dir: Path) -> None:
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, lora_run.run_dir / "adapter").eval()
    torch.testing.assert_close(peft_model(ids).logits, lora_run.model(ids).logits, rtol=1e-5, atol=1e-5)


def test_merged_folder_loads_in_transformers_with_same_logits(lora_run) -> None:
    out = export(str(lora_run.run_dir), "hf", lora_run.run_dir / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    torch.testing.assert_close(merged(ids).logits, lora_run.model(ids).logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in name for name in merged.state_dict())
