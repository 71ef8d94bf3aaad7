"""QLoRA: LoRA over a frozen base quantized to 4 bits (NF4/FP4) by bitsandbytes. CUDA only.

The base is quantized after loading, in place, so every model source works. The saved adapter is a standard
LoRA adapter for the original (unquantized) base: loading it there gives the trained model up to the 4-bit
rounding the adapter was trained against, which is how QLoRA adapters are used everywhere.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.methods import lora
from tunelab.methods.base import Method
from tunelab.models.parts import output_head

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class QloraConfig(lora.LoraConfig):
    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    """LoRA (every option of method `lora`) on a 4-bit quantized frozen base. Needs a CUDA GPU and bitsandbytes."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit format: `nf4` (NormalFloat, suited to normally distributed weights) or `fp4`."""
    double_quant: bool = True
    """Quantize the per-block scales too (about 0.4 bits per weight saved)."""
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """dtype the 4-bit weights are expanded to for each matmul."""


def require_cuda_bitsandbytes(model: nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError(
            f"method qlora is GPU-only: bitsandbytes' 4-bit kernels run on CUDA, and this run is on {device.type}. "
            "On a CPU use method lora: under bf16 training the frozen base is already stored in bf16, half of fp32."
        )
    try:
        import bitsandbytes  # noqa: F401  # pyright: ignore[reportMissingImports] - optional, checking it is there
    except ImportError:
        raise ConfigError("method qlora needs the bitsandbytes package: `pip install bitsandbytes`.") from None


def quantize_4bit_(model: nn.Module, cfg: QloraConfig) -> int:
    """Replace every linear layer but the output head by a bitsandbytes 4-bit layer; returns how many."""
    import bitsandbytes as bnb  # pyright: ignore[reportMissingImports] - optional (CUDA only), absent here

    head = output_head(model)
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is head:
                continue
            device = child.weight.device
            quantized = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=COMPUTE_DTYPES[cfg.compute_dtype], compress_statistics=cfg.double_quant,
                quant_type=cfg.quant_type, device="cpu",
            )  # fmt: skip
            # Params4bit quantizes when moved to the GPU.
            quantized.weight = bnb.nn.Params4bit(
                child.weight.data.cpu(), requires_grad=False, compress_statistics=cfg.double_quant,
                quant_type=cfg.quant_type,
            ).to(device)  # fmt: skip
            if child.bias is not None:
                quantized.bias = nn.Parameter(child.bias.data.to(device), requires_grad=False)
            setattr(parent, child_name, quantized)
            replaced += 1
    return replaced


def apply_(model: nn.Module, cfg: QloraConfig) -> nn.Module:
    from peft import prepare_model_for_kbit_training

    require_cuda_bitsandbytes(model)
    quantize_4bit_(model, cfg)
    # Casts norms to fp32 and makes the input embeddings' output require grad, so gradients reach the adapters.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return lora.apply_(model, cfg)


METHOD = Method(
    name="qlora",
    config=QloraConfig,
    apply_=apply_,
    save=lora.save,
    load_=lora.METHOD.load_,
    freezes_base=True,
    artifact="adapter",
)
