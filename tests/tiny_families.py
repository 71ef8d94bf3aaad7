"""Tiny random models of every family in the support matrix, each built from its real transformers config class.

2 layers, 48 dims, 4 query and 2 key/value heads, the tiny ChatML tokenizer of tests/tiny.py; no download.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import trl
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    Gemma2Config,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    ModernBertConfig,
    ModernBertModel,
    Olmo2Config,
    OlmoeConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

from tests.tiny import build_tokenizer

HIDDEN = 48
_GEMMA = {"head_dim": 12, "query_pre_attn_scalar": 12, "sliding_window": 64}
_MOE = {"num_experts_per_tok": 2}
CONFIGS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "llama": (LlamaConfig, {}),
    "qwen2": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, {"head_dim": 12}),
    "mistral": (MistralConfig, {"sliding_window": 64}),
    "gemma2": (Gemma2Config, _GEMMA),
    "gemma3_text": (Gemma3TextConfig, _GEMMA),
    "phi3": (Phi3Config, {}),
    "olmo2": (Olmo2Config, {}),
    "gpt_neox": (GPTNeoXConfig, {}),
    "mixtral": (MixtralConfig, {**_MOE, "num_local_experts": 4}),
    "qwen3_moe": (Qwen3MoeConfig, {**_MOE, "num_experts": 4, "moe_intermediate_size": 32, "head_dim": 12}),
    "olmoe": (OlmoeConfig, {**_MOE, "num_experts": 4}),
    "bert": (BertConfig, {}),
    "modernbert": (ModernBertConfig, {"global_attn_every_n_layers": 2, "local_attention": 32}),
}
"""model_type -> (config class, the family's own settings beside the shared tiny sizes)."""
ENCODERS: dict[str, Callable[[Any], torch.nn.Module]] = {"bert": BertModel, "modernbert": ModernBertModel}
CHAT_TEMPLATES: dict[str, tuple[str, str, list[str]]] = {
    "llama": (
        "llama3_1",
        "<|eot_id|>",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "qwen2": ("qwen2_5", "<|im_end|>", []),
    "qwen3": ("qwen3", "<|im_end|>", ["<think>", "</think>"]),
    "qwen3_moe": ("qwen3", "<|im_end|>", ["<think>", "</think>"]),
    "gemma2": ("gemma", "<end_of_turn>", ["<bos>", "<start_of_turn>", "<end_of_turn>"]),
    "gemma3_text": ("gemma3", "<end_of_turn>", ["<bos>", "<start_of_turn>", "<end_of_turn>"]),
    "phi3": ("phi3", "<|end|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
}
"""model_type -> (the family's own chat template as its models ship it, stored by TRL in trl/chat_templates, its
end-of-turn text, the special tokens it uses). Families missing here ship no chat template of their own in a
package on this machine (Mistral's and Mixtral's [INST] templates, OLMo's, Pythia's): their cell uses ChatML."""


def with_family_template(tokenizer: PreTrainedTokenizerFast, model_type: str) -> str:
    """Put the family's own chat template (and its special tokens) on `tokenizer`; its end-of-turn text (ChatML's
    `<|im_end|>` for a family without one here)."""
    if model_type not in CHAT_TEMPLATES:
        return "<|im_end|>"
    name, end, special = CHAT_TEMPLATES[model_type]
    tokenizer.add_special_tokens({"additional_special_tokens": special})  # type: ignore[arg-type]
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()
    if special and special[0] in ("<|begin_of_text|>", "<bos>"):  # the template writes {{ bos_token }} first
        tokenizer.bos_token = special[0]
    return end


def tiny_config(model_type: str, vocab_size: int, special: dict[str, int]) -> PretrainedConfig:
    """The family's config class with 2 layers of 48 dims, its own settings, and the tokenizer's special ids."""
    cls, own = CONFIGS[model_type]
    sizes = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": HIDDEN * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": model_type != "phi3",
    }
    if model_type == "modernbert":
        special = {**special, "cls_token_id": special["bos_token_id"], "sep_token_id": special["eos_token_id"]}
    return cls(**sizes, **special, **own)


def build_family(model_type: str, out: Path, seed: int = 0) -> Path:
    """Save a random tiny model of `model_type` and the tiny tokenizer to `out`, a folder tunelab loads.

    Decoders are saved as causal LMs; encoders as the bare model (as sentence encoders are), which tunelab loads
    as an encoder."""
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = tiny_config(model_type, len(tok), special)
    torch.manual_seed(seed)
    if model_type in ENCODERS:
        ENCODERS[model_type](config).save_pretrained(out, safe_serialization=True)
        return out
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out
