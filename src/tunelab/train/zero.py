"""DeepSpeed ZeRO (stages 1-3) under tunelab's own training loop.

`accelerate launch` with a DeepSpeed config (examples/accelerate/deepspeed.yaml) starts the processes; tunelab
builds the engine itself with `deepspeed.initialize`, on GPUs and on CPU processes alike (on the CPU accelerate
quietly drops DeepSpeed, as it drops FSDP). The engine shards what its stage says (1: optimizer state, 2: and
gradients, 3: and weights) while the loop keeps its own rules:

- accumulation: the engine runs unmanaged (`managed_gradient_accumulation: false`): each backward only adds to
  the gradients and the loop's `engine.step()` is the step's boundary, so the loss stays normalised over the
  whole step by the loop and is not divided again by the engine;
- clipping is the engine's, at training.max_grad_norm, and the global norm it reports is the one logged;
- a step whose gradients are not finite is skipped by the engine (it checks while computing the norm); the loop
  counts it and stops after training.max_bad_steps in a row, as without DeepSpeed;
- mixed precision is tunelab's (bf16 autocast, fp32 trainable weights and optimizer state): the config leaves
  DeepSpeed's fp16/bf16 modes off, which would cast the trainable weights themselves;
- the optimizer and the schedule are tunelab's (training.optimizer, training.scheduler).

Checkpoints hold tunelab's gathered trainable weights, scheduler and RNG state, as always, plus the engine's own
folder: each process writes its shard of the optimizer state there, and resuming reads it back under the same
launch. DeepSpeed writes those files with `torch.save` and its own loader reads them with `weights_only=False`,
which runs any code a file holds; the engine here reads them through `SafeTorchLoads` instead: `weights_only=True`
with only the three DeepSpeed classes its checkpoints hold (plain data: an enum, a loss-scale record, a fragment
address) allowed besides tensors and containers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from tunelab.core.errors import ConfigError, RunError
from tunelab.train.config import TrainingSection

ENGINE_DIR = "deepspeed"
"""The engine's own folder inside a checkpoint."""
_TAG = "zero"


def requested(accelerator: Accelerator | None = None) -> bool:
    """Whether this launch asks for DeepSpeed (accelerate's flag; on GPUs also its distributed type)."""
    if accelerator is not None and accelerator.distributed_type == DistributedType.DEEPSPEED:
        return True
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def require_deepspeed() -> None:
    """Stop with a message when the launch asks for DeepSpeed and it is not installed (call before building the
    Accelerator, which fails to start without it on GPUs)."""
    if not requested():
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise RunError(
            "The accelerate config asks for DeepSpeed, which is not installed. Install it with "
            "`pip install 'tunelab[deepspeed]'`, or launch with examples/accelerate/fsdp.yaml (the same sharding "
            "of weights, gradients and optimizer state, built into torch) or examples/accelerate/ddp.yaml."
        ) from None


def launch_config(accelerator: Accelerator) -> dict[str, Any]:
    """The DeepSpeed config of this launch: accelerate's plugin on GPUs; on CPU processes, where accelerate drops
    the plugin, the same plugin built from the variables `accelerate launch` sets."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin()
    return plugin.deepspeed_config


def engine_config(ds: dict[str, Any], cfg: TrainingSection, world_size: int) -> dict[str, Any]:
    """`ds` (a DeepSpeed config) made to run tunelab's loop: `auto` values filled from the training section,
    values that contradict it or settings that cannot work refused with a message naming both."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ds.items()}
    for key, instead in (("optimizer", "training.optimizer"), ("scheduler", "training.scheduler")):
        if key in out:
            raise ConfigError(
                f"The DeepSpeed config has a `{key}` section: tunelab builds the {key} from {instead} and steps it "
                f"itself. Remove `{key}` from the DeepSpeed config and set {instead} (and its options) instead."
            )
    for key in ("fp16", "bf16", "torch_autocast", "amp"):
        if _on(out.get(key, {}).get("enabled", False)):
            raise ConfigError(
                f"The DeepSpeed config turns on `{key}`, which would cast the trainable weights themselves. tunelab "
                "runs mixed precision itself (bf16 autocast over fp32 trainable weights and optimizer state, "
                f"training.precision): set {key}.enabled to auto or false, or mixed_precision: 'no' in the "
                "accelerate config."
            )
        out.pop(key, None)
    out["fp16"], out["bf16"] = {"enabled": False}, {"enabled": False}
    zero = dict(out.get("zero_optimization", {}))
    stage = int(zero.get("stage", 0))
    if stage not in (1, 2, 3):
        raise ConfigError(
            f"zero_optimization.stage {stage} in the DeepSpeed config shards nothing: it is plain data "
            "parallelism. Set zero_stage to 1, 2 or 3, or launch with examples/accelerate/ddp.yaml."
        )
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device not in (None, "none"):
            raise ConfigError(
                f"zero_optimization.{key}.device is {device!r}: offloading is not supported by tunelab (DeepSpeed "
                "replaces the optimizer with its own CPU Adam for it, and on CPU processes everything already lives "
                f"in host memory). Set {key}.device to none (offload_optimizer_device / offload_param_device: none)."
            )
    # Sizes accelerate derives from the model's width: DeepSpeed's own defaults serve as well.
    zero = {k: v for k, v in zero.items() if v != "auto"}
    out["zero_optimization"] = zero
    _fill(out, "train_micro_batch_size_per_gpu", cfg.batch_size, "training.batch_size")
    _fill(out, "gradient_accumulation_steps", cfg.grad_accum, "training.grad_accum")
    _fill(out, "train_batch_size", cfg.batch_size * cfg.grad_accum * world_size, "the global batch size")
    _fill(out, "gradient_clipping", cfg.max_grad_norm or 0.0, "training.max_grad_norm")
    return {
        **out,
        "managed_gradient_accumulation": False,  # the loop's engine.step() is each step's boundary
        "zero_allow_untested_optimizer": True,  # tunelab's optimizers (AdamW, Lion, Adafactor, SGD)
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31,  # progress is the loop's
    }


def _on(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _fill(config: dict[str, Any], key: str, ours: float, name: str) -> None:
    value = config.get(key, "auto")
    if value in ("auto", None):
        config[key] = ours
    elif float(value) != float(ours):
        raise ConfigError(
            f"The DeepSpeed config sets {key}={value}, but the run's {name} is {ours}. Set {key} to auto in the "
            f"DeepSpeed config (tunelab fills it in), or make the two agree."
        )


def build_engine(module: nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> nn.Module:
    """The DeepSpeed engine around the training module, with tunelab's optimizer inside it (its scheduler keeps
    stepping the same parameter groups). Every process must call it."""
    import deepspeed
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise ConfigError(
            f"The DeepSpeed config selects the checkpoint engine {type(current).__name__}, which loads checkpoints "
            "as pickles. tunelab writes DeepSpeed checkpoints with the default (torch) engine and reads them without "
            "unpickling: remove the `checkpoint` writer and `datastates` settings from the DeepSpeed config."
        )
    engine.checkpoint_engine = _safe_loads(current)
    return engine


def _safe_loads(current: Any) -> Any:
    """DeepSpeed's torch checkpoint engine, the same for writing, reading with `weights_only=True`."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]

    class SafeTorchLoads(TorchCheckpointEngine):
        def __init__(self, zipfile_serialization: bool) -> None:
            super().__init__(None)
            self.zipfile_serialization = zipfile_serialization  # as DeepSpeed's own engine was configured

        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeTorchLoads(current.zipfile_serialization)


def is_engine(module: nn.Module) -> bool:
    return hasattr(module, "zero_optimization_stage")  # DeepSpeedEngine and its subclasses


def engine_module(engine: nn.Module) -> nn.Module:
    """The training module a DeepSpeed engine (`is_engine`) wraps."""
    return cast(nn.Module, engine.module)


class EngineSteps:
    """How a step's micro-batches go backward and the step is taken through DeepSpeed's engine (the counterpart of
    the loop's `AccelerateSteps`): backward only adds to the gradients (unmanaged accumulation), and the engine's
    step reduces, clips, skips a non-finite step and updates."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # nothing is reduced before the step

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop normalised it over the whole step already

    def step(self, step_loss: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """The gradient norm before clipping and whether the update was made (False: not finite, skipped)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else float(norm)), bool(self.engine.was_step_applied())


@contextlib.contextmanager
def gathered(module: nn.Module, params: list[nn.Parameter] | None = None, write: bool = False) -> Iterator[None]:
    """Inside, `params` (default: all of `module`'s) hold their full values on every process (ZeRO-3 shards
    them; stages 1-2 keep them whole and this does nothing). With `write`, what the processes put into them is
    kept (rank 0's values, sharded again on exit). Every process must enter it."""
    params = list(module.parameters()) if params is None else params
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    from deepspeed.runtime.zero import GatheredParameters

    with GatheredParameters(params, modifier_rank=0 if write else None):
        yield


def save_engine_state(engine: Any, folder: Path) -> None:
    """The engine's checkpoint (each process its shard of the optimizer state, the fp32 master weights of
    ZeRO; frozen weights left out) under `folder/deepspeed`. Every process must call it."""
    engine.save_checkpoint(str(folder / ENGINE_DIR), tag=_TAG, save_latest=False, exclude_frozen_parameters=True)


def load_engine_state_(engine: Any, folder: Path) -> None:
    """Restore what `save_engine_state` wrote (weights, master weights, optimizer state) into the engine."""
    if not (folder / ENGINE_DIR / _TAG).is_dir():
        raise ConfigError(
            f"The checkpoint {folder} was not written under DeepSpeed (it has no {ENGINE_DIR}/ folder), so it holds "
            "no ZeRO optimizer state to resume from. Resume it with the launch that wrote it, or start a new run."
        )
    try:
        engine.load_checkpoint(
            str(folder / ENGINE_DIR), tag=_TAG, load_module_strict=False, load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )  # fmt: skip
    except pickle.UnpicklingError as exc:
        raise RunError(
            f"Cannot resume from {folder}: a file in its {ENGINE_DIR}/ folder holds objects other than tensors and "
            "DeepSpeed's own state records, and loading it could run code, so it was not loaded "
            f"({str(exc).splitlines()[-1][:200]}). Resume from a checkpoint tunelab wrote, or start the run again."
        ) from None
