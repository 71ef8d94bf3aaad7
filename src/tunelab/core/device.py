"""Devices and precision: which device a run uses, whether it computes in bf16, and the autocast regions."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


def name_cpu_for_deepspeed() -> None:
    """transformers' `save_pretrained` unwraps the model through accelerate, which imports DeepSpeed whenever it is
    installed; on a machine without a GPU DeepSpeed then warns that it "was unable to detect" one and falls back to
    the CPU. Naming the CPU for it (`DS_ACCELERATOR=cpu`, the same choice without the warning) keeps that line out
    of runs that never use DeepSpeed. A value the user set, or any GPU, leaves DeepSpeed's own detection alone."""
    if "DS_ACCELERATOR" in os.environ or torch.cuda.is_available() or torch.backends.mps.is_available():
        return
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return
    os.environ["DS_ACCELERATOR"] = "cpu"


name_cpu_for_deepspeed()


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for reports: CPUs differ several times in speed
    and in whether they compute bf16 fast."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text(errors="replace").splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 when asked, or under `auto` when the device has fast bf16 matmuls (recent GPUs, AVX512-BF16/AMX CPUs):
    on a CPU without them (AVX2 only) a bf16 matmul is hundreds of times slower than fp32, so `auto` is fp32 there."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (
        device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast for matmuls; trainable weights and optimizer state stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Leave any enclosing autocast region: sums that must stay exact (penalties, retrieval indexes) run in fp32."""
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def module_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter."""
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for the duration, then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
