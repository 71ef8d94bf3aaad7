"""Sharded data parallelism (FSDP) for the training loop: what a launch asks for, sharding on the CPU, and
gathering the full weights back so that checkpoints and results are written once, by the main process.

accelerate shards a model only on GPUs: on the CPU (gloo) it quietly ignores an FSDP config and would wrap the
model in DDP. There tunelab shards the model itself with torch's FSDP2 (`fully_shard`): one unit per decoder layer,
then the rest with the training module as the root, as accelerate does on GPUs. Saving and restoring go through torch's
`torch.distributed.checkpoint.state_dict` API, which reads plain, DDP, FSDP1 and FSDP2 modules alike.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.methods.base import StepHook
from tunelab.models.parts import decoder_layers
from tunelab.train import zero
from tunelab.train.config import TrainingSection

Sharding = Literal["none", "fsdp-cpu", "fsdp-accelerate", "deepspeed"]
_STRATEGIES = ["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"]  # accelerate's order


def check_backend(accelerator: Accelerator) -> Sharding:
    """How the launch shards the model: not at all (one process, DDP), by tunelab with FSDP2 (FSDP asked for on
    CPU processes), by accelerate (FSDP on GPUs), or by a DeepSpeed ZeRO engine tunelab builds (`zero`)."""
    if zero.requested(accelerator):
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        assert plugin is not None  # accelerate sets it whenever it runs FSDP
        if plugin.fsdp_version == 1 and not plugin.use_orig_params:
            raise ConfigError(
                "The accelerate config asks for FSDP version 1 without fsdp_use_orig_params: its flattened parameters "
                "lose the names and the trainable/frozen split that tunelab's checkpoints and adapters need. Set "
                "fsdp_version: 2 (as examples/accelerate/fsdp.yaml does), or fsdp_use_orig_params: true."
            )
        return "fsdp-accelerate"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    # One process has nothing to shard across: the plain loop is the same computation.
    return "fsdp-cpu" if fsdp and accelerator.num_processes > 1 else "none"


@dataclass(frozen=True)
class FsdpSettings:
    """What an accelerate FSDP config asks for, read from the FSDP_* variables `accelerate launch` sets. CPU
    offload and the state-dict type have no effect here: parameters already live on the CPU, and tunelab always
    gathers full weights for its checkpoints."""

    wrap: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"]
    layer_classes: tuple[str, ...]
    """Class names of the modules that become their own unit; empty: the model's decoder layers."""
    min_num_params: int
    reshard_after_forward: bool


def fsdp_settings(env: dict[str, str] | None = None) -> FsdpSettings:
    """The FSDP settings of this launch (`env` defaults to the process environment)."""
    env = dict(os.environ if env is None else env)
    wrap = env.get("FSDP_AUTO_WRAP_POLICY", "NO_WRAP").upper()
    if wrap not in ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"):
        raise ConfigError(
            f"fsdp_auto_wrap_policy {wrap!r} in the accelerate config is not one of TRANSFORMER_BASED_WRAP, "
            "SIZE_BASED_WRAP, NO_WRAP. Set it to TRANSFORMER_BASED_WRAP (one unit per decoder layer)."
        )
    if env.get("FSDP_VERSION", "1") == "2":
        reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in ("true", "1", "yes")
    else:
        strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        strategy = _STRATEGIES[int(strategy) - 1] if strategy.isdigit() else strategy
        if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise ConfigError(
                f"fsdp_sharding_strategy {strategy} is not supported on CPU processes: tunelab shards there with "
                "FSDP2, which does FULL_SHARD (weights gathered per layer for forward and backward) or SHARD_GRAD_OP "
                "(kept gathered between them). Use one of those, or examples/accelerate/ddp.yaml for NO_SHARD."
            )
        reshard = strategy == "FULL_SHARD"
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise ConfigError(
            "fsdp_activation_checkpointing in the accelerate config is not applied by tunelab on CPU processes. "
            "Remove it and set training.gradient_checkpointing=true, which works with and without FSDP."
        )
    names = tuple(n.strip() for n in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if n.strip())
    return FsdpSettings(wrap, names, int(env.get("FSDP_MIN_NUM_PARAMS", "100000000")), reshard)  # type: ignore[arg-type]


def refuse_unsharded_state(cfg: TrainingSection, hooks: Sequence[StepHook]) -> None:
    """Refuse training options that hold references to the unsharded weights, which sharding replaces."""
    held = [
        name
        for name, on in (
            ("gradual unfreezing (method.unfreeze_every)", any(h.dormant_parameters() for h in hooks)),
            ("training.l1_penalty / training.l2_penalty", bool(cfg.l1_penalty or cfg.l2_penalty)),
            ("EWC (continual.ewc_lambda)", cfg.ewc_state is not None),
        )
        if on
    ]
    if held:
        raise ConfigError(
            f"{held[0]} does not work with FSDP or DeepSpeed: it keeps its own references to the full weights, which "
            "sharding replaces with shards. Turn it off for this run, or launch with examples/accelerate/ddp.yaml."
        )


def shard_(module: nn.Module, settings: FsdpSettings, world_size: int) -> int:
    """Shard the training module (and the model in it) in place across the CPU processes with FSDP2: each unit
    the settings choose, then the rest with the training module as the root. The root must be the module whose
    forward computes the whole loss: the losses call the decoder and the output head separately, and a root
    unit's weights (embeddings, head) are gathered only inside its own forward. Build the optimizer afterwards
    (sharding replaces the parameters). Returns the number of inner units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    units = _units(module, settings)
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(module, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    return len(units)


def _units(model: nn.Module, settings: FsdpSettings) -> list[nn.Module]:
    if settings.wrap == "NO_WRAP":
        return []
    if settings.wrap == "SIZE_BASED_WRAP":  # like FSDP1's size policy: a module whose not yet wrapped weights are many
        units, covered = [], set()
        for module in reversed([m for _, m in model.named_modules()][1:]):  # children before their parents
            own = [p for p in module.parameters() if id(p) not in covered]
            if sum(p.numel() for p in own) >= settings.min_num_params:
                units.append(module)
                covered |= {id(p) for p in own}
        return units
    if not settings.layer_classes:
        return list(decoder_layers(model)[1])
    units = [m for m in model.modules() if type(m).__name__ in settings.layer_classes]
    if not units:
        found = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith(("Layer", "Block"))})
        raise ConfigError(
            f"fsdp_transformer_layer_cls_to_wrap names {', '.join(settings.layer_classes)}, which this model does "
            f"not have (its layer classes: {', '.join(found) or 'none'}). Name one of those, or leave the key out "
            "and tunelab wraps the model's decoder layers."
        )
    return units


def name_layer_class_(accelerator: Accelerator, model: nn.Module) -> None:
    """On GPUs accelerate wraps by the class names its FSDP plugin holds, or else by the wrapped module's
    `_no_split_modules`, which tunelab's training module lacks: name the decoder layer class when the config
    does not."""
    plugin = accelerator.state.fsdp_plugin
    if plugin is not None and plugin.transformer_cls_names_to_wrap is None:
        layers = decoder_layers(model)[1]
        plugin.transformer_cls_names_to_wrap = [type(layers[0]).__name__]


def summed(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes (accelerate types `reduce` for any nest of tensors; this is one)."""
    return cast(torch.Tensor, accelerator.reduce(tensor, "sum"))


def replicated(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor with the full value of `tensor` (a gradient norm over sharded gradients is a DTensor)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters are on the meta device (no memory) and whose buffers and settings are
    real: the frame the gathered weights go back into after sharded training. Take it before sharding."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def unsharded(module: nn.Module, frame: nn.Module, prefix: str = "model.") -> nn.Module:
    """`frame` (from `meta_copy`) filled with the full weights of the model under `prefix` in the sharded
    `module`, on every process. Every process must call it (the weights are gathered)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if zero.is_engine(module):  # DeepSpeed: ZeRO-3 shards gathered for the copy (stages 1-2 hold them whole)
        inner = zero.engine_module(module)
        with zero.gathered(inner):
            full = {k: v.detach().clone() for k, v in inner.state_dict().items()}
    else:
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    tied = _tied_names(frame)
    weights = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    frame.load_state_dict(weights, strict=False, assign=True)
    for names in tied:  # loading assigns each name its own tensor: tie them again, keeping a loaded one
        keep = next((frame.get_parameter(n) for n in names if not frame.get_parameter(n).is_meta), None)
        for name in names if keep is not None else []:
            owner, _, attr = name.rpartition(".")
            setattr(frame.get_submodule(owner), attr, keep)
    missing = [n for n, p in frame.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"gathering the sharded model left {len(missing)} weights unfilled, e.g. {missing[0]}")
    return frame


def _tied_names(model: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]
