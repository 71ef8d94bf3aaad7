"""The `training:` section: optimizer, schedule, batching, precision, checkpoints, and the extra loss terms and
wrappers of `tunelab.regularizers` that the loop adds to the objective."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from tunelab.core.duration import Duration
from tunelab.core.schema import Section
from tunelab.regularizers.config import AdversarialSection

AutoField = Literal["batch_size", "epochs", "learning_rate"]
AUTO_FIELDS: tuple[AutoField, ...] = ("batch_size", "epochs", "learning_rate")
"""The settings that may be written `auto` (chosen by the rules of `tunelab.train.auto` once the data is read)."""


class TrainingSection(Section):
    epochs: int = Field(default=1, ge=1)
    """Passes over the training data (ignored when `max_steps` is set); `auto`: enough passes for about 120
    optimizer steps (at most 8), see `tunelab.train.auto`."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps."""
    max_time: Duration | None = Field(default=None, gt=0)
    """Time budget of the training loop, in seconds or as text ("90m", "2h", "1h30m"): once it is spent the run
    stops after the current step, evaluates, saves its result and a checkpoint, and `--resume` trains on (with
    a fresh budget)."""
    batch_size: int = Field(default=8, ge=1)
    """Examples per micro-batch on each device; `auto`: 16, less for small data sets (at least 16 steps per pass)
    and for long rows (about 4096 tokens per micro-batch)."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step; the loss is normalised over all target tokens of the step."""
    micro_batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    """Run a micro-batch as pieces of at most this many (padded) tokens, each its own forward and backward, when
    the objective's loss is a sum over rows (sft, pretrain): the same gradient with a bounded activation memory.
    `auto`: 512 on a CPU (but two rows a piece at least), no splitting on accelerators; null: never split."""
    learning_rate: float = Field(default=2e-4, gt=0)
    """Peak learning rate; `auto`: chosen from the method, model size, batch and objective (`tunelab.train.auto`;
    1e-3 for LoRA at a batch of 16)."""
    optimizer: Literal["adamw", "adamw_8bit", "sgd", "adafactor", "lion"] = "adamw"
    """`adamw` (fused kernels where the device has them), `adamw_8bit` (bitsandbytes, CUDA only: 8-bit moments),
    `sgd` (with `momentum` / `nesterov`), `adafactor` (factored second moments: least optimizer memory), `lion`
    (sign updates, one moment; use a 3-10x smaller learning rate than AdamW)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled weight decay, applied to matrices only (not to norms or biases)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    lion_betas: tuple[float, float] = (0.9, 0.99)
    """Lion's betas: the first interpolates the update direction, the second is the momentum decay."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum."""
    nesterov: bool = False
    """SGD with Nesterov momentum (needs momentum > 0)."""
    layer_lr_decay: float | None = Field(default=None, gt=0, le=1)
    """Layer-wise learning-rate decay: transformer layer i of L trains at lr * decay^(L-1-i), the input
    embeddings at lr * decay^L; the final norm and output head at lr. Typical: 0.8-0.95."""
    head_lr: float | None = Field(default=None, gt=0)
    """Own learning rate for the output head (lm_head or a task head); with tied embeddings it is the
    embeddings' rate too."""
    embedding_lr: float | None = Field(default=None, gt=0)
    """Own learning rate for the input embeddings."""
    loraplus_lr_ratio: float | None = Field(default=None, gt=0)
    """LoRA+: train the B matrices of LoRA/DoRA adapters at lr * ratio (the paper suggests 16)."""
    scheduler: Literal["cosine", "linear", "constant", "cosine_restarts", "polynomial", "inverse_sqrt", "wsd"] = (
        "cosine"
    )
    """Learning-rate shape after warmup: `cosine`/`linear` decay to `min_lr_ratio`; `cosine_restarts` runs
    `num_cycles` cosine decays back to back; `polynomial` decays as (1-progress)^`poly_power`; `inverse_sqrt`
    falls as sqrt(warmup/step); `wsd` (warmup-stable-decay) holds the peak, then decays linearly over the last
    `decay_ratio` of training; `constant` holds the peak."""
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Floor of the decaying schedules, as a fraction of the peak learning rate."""
    num_cycles: int = Field(default=1, ge=1)
    """Number of cosine cycles for `cosine_restarts`."""
    poly_power: float = Field(default=1.0, gt=0)
    """Exponent of the `polynomial` schedule (1 is linear)."""
    decay_ratio: float = Field(default=0.1, gt=0, le=1)
    """`wsd`: fraction of all steps spent in the final decay."""
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    """Warmup length as a fraction of all steps (`warmup_steps` wins when set)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Warmup length in steps."""
    l1_penalty: float = Field(default=0.0, ge=0)
    """Add this times the L1 norm of the trained weights (`penalty_on`) to the loss; pushes updates to sparsity."""
    l2_penalty: float = Field(default=0.0, ge=0)
    """Add this times the squared L2 norm of the trained weights (`penalty_on`) to the loss."""
    penalty_on: Literal["delta", "weights"] = "delta"
    """What the L1/L2 penalties measure. `delta`: the change from the starting model (LoRA's s·B·A, IA3's scale
    minus 1, a bottleneck adapter's weights, or W - W0 for fully trained weights: L2-SP, which keeps a copy of
    them). `weights`: the trainable tensors themselves."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    """Spread this much of each target's probability over the whole vocabulary (or label set)."""
    loss_chunk_tokens: int = Field(default=2048, ge=0)
    """Above this many next-token targets in a micro-batch, the output head and the cross-entropy run in chunks of
    this many, each chunk's logits recomputed in the backward pass: the (targets x vocabulary) logits never exist
    whole, which is what makes long rows fit (a 32k-token row of a 49k-vocabulary model: 6 GiB of fp32 logits and
    as much for their gradient; a 2,048-target chunk: 0.4 GiB). Costs one more output-head matmul per chunk (short
    answers, with fewer targets than this, never pay it); 0 keeps the loss in one piece."""
    neftune_alpha: float | None = Field(default=None, gt=0)
    """NEFTune: add uniform noise of scale alpha / sqrt(length * hidden) to input embeddings while training
    (the paper uses 5). Off when null."""
    dropout: float | None = Field(default=None, ge=0, lt=1)
    """Override every dropout probability of the model (attention, hidden, embedding) for training; null keeps
    the model's own."""
    router_aux_loss_coef: float | None = Field(default=None, ge=0)
    """Mixture-of-experts models: weight of the router's load-balancing loss (Switch Transformer) added to the
    training loss; null: the model config's `router_aux_loss_coef`, 0: off (utilisation is still logged)."""
    router_aux_loss_scope: Literal["layer", "pooled"] = "layer"
    """`layer`: the balancing loss of each MoE layer, averaged (Switch Transformer); `pooled`: transformers' own
    form, one loss of the expert counts and probabilities pooled over the layers (balanced overall can still mean
    collapsed in every layer)."""
    router_z_loss_coef: float = Field(default=0.0, ge=0)
    """Mixture-of-experts models: weight of the router z-loss (ST-MoE: mean squared logsumexp of the router
    logits, which keeps them small; 0.001 in the paper); 0: off."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value; null disables clipping."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision. `auto`: bf16 autocast where the device supports it (trainable weights stay fp32)."""
    seed: int = 42
    """Seed for data order, splits, dropout and initialisation."""
    eval_every: int | None = Field(default=None, ge=1)
    """Evaluate validation loss every N steps (always at the end of each epoch and of training)."""
    save_every: int | None = Field(default=None, ge=1)
    """Write a resumable checkpoint every N steps (always at the end)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """How many recent checkpoints to keep."""
    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop after this many evaluations without improving validation loss by `early_stopping_min_delta`."""
    early_stopping_min_delta: float = Field(default=0.0, ge=0)
    """Smallest validation-loss decrease that counts as an improvement."""
    log_every: int = Field(default=10, ge=1)
    """Write a metrics line every N steps."""
    group_by_length: bool = True
    """Batch examples of similar length together to cut padding (order stays random across batches)."""
    num_threads: int | None = Field(default=None, ge=1)
    """CPU threads for torch; default: all cores."""
    fused_modules: Literal["auto"] | bool = "auto"
    """The fast path: leaner RMSNorm and gated-MLP modules (same maths, fewer saved activations) and matrix-product
    causal attention for rows of up to 128 tokens (faster than the CPU flash kernel there), and a leaner forward of
    peft's LoRA layers (models/kernels/lora.py). `auto`: the parts the model's family can take (the README's support
    matrix says which, and why not the others); `true`: all of them, refusing a model that cannot take one; `false`:
    off."""
    adversarial: AdversarialSection | None = None
    """Embedding-space adversarial training (fgm, pgd, freelb, smart) on top of the objective; off when null."""
    task_weights: dict[str, float] = {}
    """Multi-task loss weights by task tag (file stem, or a row's `task` field): each task's loss is multiplied
    by its weight; tasks left out weigh 1."""
    task_weighting: Literal["fixed", "uncertainty"] = "fixed"
    """`fixed`: `task_weights` as given. `uncertainty` (Kendall et al. 2018): per micro-batch,
    Σ_t exp(-s_t) L_t + s_t over the tasks present (L_t: the task's mean loss), one s_t per task learned with the
    model (on top of any `task_weights`)."""
    ewc_state: str | None = None
    """EWC: an `ewc.safetensors` file (or the folder holding one) with the Fisher and the weights of earlier
    tasks; the penalty ewc_lambda/2 · Σ F (θ - θ*)² is added to every step. `continual.ewc` sets it per stage."""
    ewc_lambda: float = Field(default=1000.0, gt=0)
    """λ of the EWC penalty (with `ewc_state`)."""
    max_bad_steps: int = Field(default=5, ge=1)
    """A step whose loss or gradient norm is NaN/inf is skipped (no update; counted as `skipped_steps` in the
    metrics); this many in a row stop the run with an error."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: much less activation
    memory for about a third more compute. Works with adapters (frozen base) and full training."""
    auto_batch_size: bool = False
    """Choose the micro-batch (`batch_size`) and `grad_accum` so that micro x accum x processes equals
    `global_batch_size`. On CUDA: the largest divisor that trains a step on the longest examples without running
    out of memory. On CPU nothing is run: an estimate of the activation memory must fit in half the available RAM
    (for a model without the usual config sizes, `batch_size` is the cap)."""
    global_batch_size: int | None = Field(default=None, ge=1)
    """Examples per optimizer step over all processes, for `auto_batch_size` (default: batch_size x grad_accum x
    processes as configured)."""

    auto: frozenset[AutoField] = frozenset()
    """The settings written `auto` (`learning_rate: auto`) that the run chooses once its data is read; a
    written-out config shows them as `auto` again, and a run folder's config.yaml holds the chosen numbers."""

    @model_validator(mode="before")
    @classmethod
    def _auto_values(cls, raw: Any) -> Any:
        """`learning_rate: auto` (likewise epochs, batch_size) is noted in `auto`; the field keeps its default
        until `tunelab.train.auto.resolve_auto` sets it. A number given for a field clears its `auto`."""
        if not isinstance(raw, dict):
            return raw
        marked = {key for key in AUTO_FIELDS if raw.get(key) == "auto"}
        given = {key for key in AUTO_FIELDS if key in raw and raw[key] != "auto"}
        if not marked and not given:
            return raw
        earlier = raw.get("auto") or ()
        auto = (set(earlier) if isinstance(earlier, list | set | frozenset | tuple) else set()) - given | marked
        return {**{k: v for k, v in raw.items() if k not in marked}, "auto": frozenset(auto)}

    @model_serializer(mode="wrap")
    def _write_auto(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Written out, a setting still to be chosen reads `auto` in its own key (and `auto` itself is left out),
        so the YAML reads back as it was written."""
        data = handler(self)
        data.pop("auto", None)
        for key in sorted(self.auto):
            data[key] = "auto"
        return data

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainingSection:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0; set training.momentum (e.g. 0.9) or nesterov=false")
        return self

    @model_validator(mode="after")
    def _global_batch_needs_auto(self) -> TrainingSection:
        if self.global_batch_size is not None and not self.auto_batch_size:
            raise ValueError(
                "global_batch_size is used only with auto_batch_size: true; set training.auto_batch_size=true, or "
                "drop global_batch_size and set batch_size and grad_accum yourself"
            )
        return self
