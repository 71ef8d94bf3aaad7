"""int8 dynamic quantisation for CPU serving: Linear weights stored as int8, activations quantised per batch.

PyTorch's `quantize_dynamic` swaps chosen `nn.Linear`s for quantised ones (fbgemm/x86 kernels): no calibration
data, a quarter of the weights' fp32 memory, faster matmuls on CPUs. Weights are quantised per output channel.

Two kinds of layer stay in full precision by default, because measuring showed they carry the loss
(benchmarks/results/export_int8.md, SmolLM2-135M): the MLP down projections, whose inputs have large outlier
activations that 8-bit per-tensor activation scales crush (perplexity 31 → 66 from those layers alone), and the
output head, which is tied to the embeddings and decides every logit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_SKIP = ("lm_head", "down_proj")


def quantize_int8_(model: nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> nn.Module:
    """Quantise `model`'s Linear layers to int8 in place, except those whose name ends with an entry of `skip`.

    The model is moved to fp32 on the CPU first (the kernels are CPU-only); returns it.
    """
    model = model.float().cpu().eval()
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path still works and ships.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic
        from torch.ao.quantization.qconfig import per_channel_dynamic_qconfig

        chosen = {
            name: per_channel_dynamic_qconfig
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not any(name.endswith(s) for s in skip)
        }
        return quantize_dynamic(model, chosen, dtype=torch.qint8, inplace=True)
