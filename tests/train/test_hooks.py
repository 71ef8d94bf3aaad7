"""The loop drives the methods' training-time hooks: gradual unfreezing thaws layers on schedule, and the ΔW
penalty is added to the loss (a strong L2 on ΔW keeps the adapter much smaller than without it)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.helpers import tiny_config
from tunelab.models.load import load_model
from tunelab.recipes.run import run_training


def test_gradual_unfreezing_in_a_real_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(
        tmp_path, tiny_model_dir, "method=freeze", "method.top_k_layers=1", "method.unfreeze_every=4",
        "method.unfreeze_unit=steps", "training.max_steps=6", "eval.generate=false", "eval.baseline=false",
    )  # fmt: skip
    trained = load_file(run_training(cfg).run_dir / "model" / "model.safetensors")
    base = {k: v for k, v in load_model(str(tiny_model_dir)).state_dict().items()}
    # Layer 1 trains from the start, layer 0 thaws after step 4; both must have moved by the end.
    for layer in (0, 1):
        key = f"model.layers.{layer}.mlp.down_proj.weight"
        assert not torch.equal(trained[key], base[key]), f"layer {layer} never trained"


def lora_b_norm(run_dir: Path) -> float:
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    return sum(float(v.pow(2).sum()) for k, v in weights.items() if "lora_B" in k)


def test_delta_penalty_reaches_the_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    common = ["method.r=4", "training.max_steps=20", "eval.generate=false", "eval.baseline=false"]
    free = run_training(tiny_config(tmp_path, tiny_model_dir, *common, name="free")).run_dir
    held = run_training(tiny_config(tmp_path, tiny_model_dir, *common, "training.l2_penalty=1.0", name="held")).run_dir
    assert lora_b_norm(held) < 0.5 * lora_b_norm(free)
