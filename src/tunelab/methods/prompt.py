"""Prompt tuning and P-tuning: learnt virtual-token embeddings prepended to the input (through peft, decoders).

`encoder: none` is prompt tuning (Lester et al.: the embeddings themselves learn); `mlp` / `lstm` is P-tuning
(Liu et al.: a small encoder produces them). The forward then returns logits for the virtual tokens too, so
objectives must run the whole forward and drop those positions.
"""

from __future__ import annotations

from typing import Literal

from peft import PromptEncoderConfig, PromptTuningConfig
from pydantic import Field, model_validator
from torch import nn

from tunelab.core.schema import Section
from tunelab.methods.base import Method
from tunelab.methods.peft_io import load_adapter_, require_decoder, save_adapter, wrap_


class PromptConfig(Section):
    name: Literal["prompt"] = "prompt"
    """Learn `num_virtual_tokens` input embeddings placed before every prompt; the base stays frozen."""
    num_virtual_tokens: int = Field(default=16, ge=1)
    """How many virtual tokens. Each costs one hidden-size vector (prompt tuning)."""
    encoder: Literal["none", "mlp", "lstm"] = "none"
    """`none`: prompt tuning. `mlp` / `lstm`: P-tuning, the virtual tokens come out of this small encoder."""
    encoder_hidden: int = Field(default=128, ge=1)
    """Hidden width of the P-tuning encoder."""
    init_text: str | None = None
    """Prompt tuning only: start the virtual tokens from this text's token embeddings (repeated to length),
    e.g. 'Answer the question with one colour'. Default: random."""

    @model_validator(mode="after")
    def _init_text_needs_plain_prompt(self) -> PromptConfig:
        if self.init_text is not None and self.encoder != "none":
            raise ValueError("init_text works only with encoder=none (P-tuning encoders start random); drop one")
        return self


def apply_(model: nn.Module, cfg: PromptConfig) -> nn.Module:
    require_decoder(model, "prompt")
    if cfg.encoder == "none":
        text = {}
        if cfg.init_text is not None:
            # peft reads the tokenizer from the model's own folder, which `models.load` always fills.
            text = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": cfg.init_text,
                    "tokenizer_name_or_path": model.name_or_path}  # fmt: skip
        config = PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM", **text)
    else:
        config = PromptEncoderConfig(
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=cfg.encoder.upper(),
            encoder_hidden_size=cfg.encoder_hidden,
            task_type="CAUSAL_LM",
        )
    return wrap_(model, config)


METHOD = Method(
    name="prompt",
    config=PromptConfig,
    apply_=apply_,
    save=save_adapter,
    load_=load_adapter_,
    freezes_base=True,
    artifact="adapter",
    mergeable=False,
)
