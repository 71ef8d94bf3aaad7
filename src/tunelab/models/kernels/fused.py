"""Leaner RMSNorm and gated MLPs for training: the same maths as the Hugging Face modules, fewer saved activations.

What autograd keeps for the backward pass, per token and layer, dominates training memory on short sequences:
- Hugging Face's RMSNorm upcasts its input to fp32 and keeps fp32 copies for the backward. `FusedRMSNorm` keeps
  the input as it came (bf16 under autocast) and one fp32 scale per token, and recomputes the rest.
- A gated MLP `act(gate) * up` (SwiGLU, GeGLU) keeps gate, act(gate) and up. `FusedGatedMLP` keeps gate and up,
  and recomputes the activation in the backward (cheap elementwise work).
On the embedded SmolLM2-135M (LoRA r16, 16 short chat rows, bf16 autocast) the bytes saved for the backward drop
by 18% (1,454 MB -> 1,198 MB) at the same CPU time per step.

The families differ in small ways the fused modules follow exactly:
- Llama, Mistral, Qwen2/3, Phi-3 and the MoE families cast the normalised input back to its dtype and then scale
  by `weight`; OLMo 2 scales in fp32 and then casts; Gemma 2/3 scale by `1 + weight` in fp32 and then cast.
- Llama-style MLPs have `gate_proj` and `up_proj`; Phi-3 has one `gate_up_proj` whose output halves are gate and
  up. SiLU gives SwiGLU; Gemma's `gelu_pytorch_tanh` gives GeGLU (exact-erf GELU is taken too).

`fuse_modules_(model)` swaps the modules in place before a method wraps the linear layers; parameter names and
the state dict stay the same, so saving, merging and peft see the usual model. Only modules whose class and
activation are listed here are swapped; anything else (LayerNorm, plain GELU MLPs, expert blocks) is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["silu", "gelu_tanh", "gelu"]


@dataclass(frozen=True)
class NormStyle:
    """How a family's RMSNorm applies its weight: `offset + weight`, multiplied before or after the cast back."""

    offset: float = 0.0
    scale_in_fp32: bool = False


LLAMA_NORM, OLMO2_NORM, GEMMA_NORM = NormStyle(), NormStyle(scale_in_fp32=True), NormStyle(1.0, True)
NORM_STYLES: dict[str, NormStyle] = {
    "LlamaRMSNorm": LLAMA_NORM,
    "MistralRMSNorm": LLAMA_NORM,
    "Qwen2RMSNorm": LLAMA_NORM,
    "Qwen3RMSNorm": LLAMA_NORM,
    "Phi3RMSNorm": LLAMA_NORM,
    "MixtralRMSNorm": LLAMA_NORM,
    "Qwen2MoeRMSNorm": LLAMA_NORM,
    "Qwen3MoeRMSNorm": LLAMA_NORM,
    "OlmoeRMSNorm": LLAMA_NORM,
    "Olmo2RMSNorm": OLMO2_NORM,
    "Gemma2RMSNorm": GEMMA_NORM,
    "Gemma3RMSNorm": GEMMA_NORM,
}
"""RMSNorm classes by name, and how each applies its weight (checked against each in the parity tests)."""
MLP_CLASSES = {
    "LlamaMLP",
    "MistralMLP",
    "Qwen2MLP",
    "Qwen3MLP",
    "Gemma2MLP",
    "Gemma3MLP",
    "Olmo2MLP",
    "Phi3MLP",
    "Qwen2MoeMLP",
    "Qwen3MoeMLP",
    "OlmoeMLP",
}
"""Gated MLP classes: `down(act(gate(x)) * up(x))`, with `gate_up_proj` in place of gate and up for Phi-3."""


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, style: NormStyle) -> torch.Tensor:
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.style = style
        if style.scale_in_fp32:
            return ((weight.float() + style.offset) * (x.float() * rstd)).to(x.dtype)
        scale = weight + style.offset if style.offset else weight
        return scale * (x.float() * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, rstd = ctx.saved_tensors
        style: NormStyle = ctx.style
        xhat = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            # The reference multiplies the weight by xhat rounded to x's dtype unless it scales in fp32.
            seen = xhat if style.scale_in_fp32 else xhat.to(x.dtype).float()
            grad_weight = (grad.float() * seen).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = grad.float() * (weight.float() + style.offset)
            grad_x = (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None, None


class FusedRMSNorm(nn.Module):
    """RMSNorm with the statistics in fp32, applying `weight` as `style` says; keeps `weight` as its own."""

    def __init__(self, weight: nn.Parameter, eps: float, style: NormStyle = LLAMA_NORM) -> None:
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.style = style

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # As in the reference, `weight * normalized.to(input dtype)` promotes to the wider of the two dtypes.
        return _RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, self.style)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, offset={self.style.offset}, fused"


def _activate(gate: torch.Tensor, kind: Activation) -> torch.Tensor:
    return F.silu(gate) if kind == "silu" else F.gelu(gate, approximate="tanh" if kind == "gelu_tanh" else "none")


class _GatedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, kind: Activation) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.kind = kind
        return _activate(gate, kind) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        gate, up = ctx.saved_tensors
        kind: Activation = ctx.kind
        # One kernel each (fp32 inside) for d act(gate) / d gate times the incoming gradient.
        if kind == "silu":
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        else:
            grad_gate = torch.ops.aten.gelu_backward(
                grad * up, gate, approximate="tanh" if kind == "gelu_tanh" else "none"
            )
        return grad_gate, grad * _activate(gate, kind), None


def gated(gate: torch.Tensor, up: torch.Tensor, kind: Activation) -> torch.Tensor:
    """`act(gate) * up`, keeping only gate and up for the backward."""
    if gate.dtype != up.dtype:  # mixed storage outside autocast: promote, as the reference's product does
        wide = torch.promote_types(gate.dtype, up.dtype)
        gate, up = gate.to(wide), up.to(wide)
    return _GatedFunction.apply(gate, up, kind)


class FusedGatedMLP(nn.Module):
    """`down(act(gate(x)) * up(x))` holding the block's own projection modules (LoRA may wrap them later)."""

    def __init__(self, mlp: nn.Module, kind: Activation) -> None:
        super().__init__()
        self.gate_proj = mlp.get_submodule("gate_proj")
        self.up_proj = mlp.get_submodule("up_proj")
        self.down_proj = mlp.get_submodule("down_proj")
        self.kind: Activation = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gated(self.gate_proj(x), self.up_proj(x), self.kind))


class FusedMergedGatedMLP(nn.Module):
    """Phi-3's MLP: one `gate_up_proj` whose output halves are gate and up, then `down_proj`."""

    def __init__(self, mlp: nn.Module, kind: Activation) -> None:
        super().__init__()
        self.gate_up_proj = mlp.get_submodule("gate_up_proj")
        self.down_proj = mlp.get_submodule("down_proj")
        self.kind: Activation = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(gated(gate, up, self.kind))


def fuse_modules_(model: nn.Module) -> int:
    """Swap the listed RMSNorm and gated-MLP modules in `model` for the fused ones; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            fused = _fused(child)
            if fused is not None:
                setattr(parent, name, fused)
                swapped += 1
    return swapped


def _fused(module: nn.Module) -> nn.Module | None:
    """The fused replacement of `module`, or None when it is not one of the listed classes."""
    kind = type(module).__name__
    if kind in NORM_STYLES:
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if eps is None:
            return None
        # A plain float attribute, which nn.Module's type misreads.
        return FusedRMSNorm(module.get_parameter("weight"), cast(float, eps), NORM_STYLES[kind])
    if kind not in MLP_CLASSES:
        return None
    activation = mlp_activation(module)
    if activation is None:
        return None
    if hasattr(module, "gate_up_proj"):
        return FusedMergedGatedMLP(module, activation)
    return FusedGatedMLP(module, activation) if hasattr(module, "gate_proj") else None


def mlp_activation(mlp: nn.Module) -> Activation | None:
    """The gate activation of a gated MLP when the fused backward has it, else None."""
    act = getattr(mlp, "act_fn", getattr(mlp, "activation_fn", None))
    name = type(act).__name__
    if isinstance(act, nn.SiLU) or name == "SiLUActivation":
        return "silu"
    if name == "GELUTanh" and getattr(getattr(act, "act", None), "keywords", {}).get("approximate") == "tanh":
        return "gelu_tanh"
    if isinstance(act, nn.GELU) and act.approximate in ("none", "tanh"):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    if name == "GELUActivation" and getattr(act, "act", None) is F.gelu:
        return "gelu"
    return None
