"""int8 dynamic quantisation for CPU serving: Linear weights stored as int8, activations quantised per batch.

PyTorch's `quantize_dynamic` swaps every `nn.Linear` for a quantised one (fbgemm/x86 kernels). It needs no
calibration data, roughly quarters the Linear weights' memory, and speeds up fp32 matmuls on CPUs without
bf16 units; on CPUs with AMX, bf16 is usually faster (see benchmarks/results/export_int8.md). Quality loss is
measured there too (logit drift and perplexity on a fixed text).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_int8_(model: nn.Module) -> nn.Module:
    """Quantise `model`'s Linear layers to int8 in place (the model must be fp32 on the CPU); returns it."""
    model = model.float().cpu().eval()
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path still works and ships.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
