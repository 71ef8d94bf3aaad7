"""Tiny random models built from a config in code: no download, seconds to train."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelab.models.load import CHATML_TEMPLATE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "red",
    "blue",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "yes",
    "no",
    "what",
    "is",
    "color",
    "of",
    "sky",
]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (about 300 tokens) with ChatML special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([*corpus(), "system user assistant\n"], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_tiny_llama(out: Path, seed: int = 0, layers: int = 2, hidden: int = 48) -> Path:
    """Save a random 2-layer Llama and its tokenizer to `out` (a folder `tunelab` loads as a model source)."""
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_color_task(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable chat task: 'what is color of X' -> a fixed color per word."""
    rng = random.Random(seed)
    colors = {"cat": "red", "dog": "blue", "mat": "red", "sky": "blue", "one": "red", "two": "blue"}
    with path.open("w") as fh:
        for _ in range(n):
            word = rng.choice(list(colors))
            row = {
                "messages": [
                    {"role": "user", "content": f"what is color of {word}"},
                    {"role": "assistant", "content": colors[word]},
                ]
            }
            fh.write(json.dumps(row) + "\n")
    return path
