"""Write a Llama-architecture Hugging Face folder as a GGUF file for llama.cpp and Ollama.

Written with the `gguf` package (llama.cpp's own writer) rather than by calling `convert_hf_to_gguf.py`: that script
is not on PyPI and pulls a whole llama.cpp checkout. What it does for Llama is small and mirrored here: the HF →
GGUF tensor-name map from `gguf` itself, the Q/K row permutation llama.cpp's rotary kernel expects, the byte-level
BPE vocabulary with merges, the pre-tokenizer name decided as llama.cpp's converter decides it, and the chat
template (gguf_vocab.py). `verify_gguf` reads the file back with `gguf.GGUFReader`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import gguf
import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
)

from tunelab.core.files import disk_full_as_error, fsync_dir, fsync_file
from tunelab.export.errors import ExportError
from tunelab.export.gguf_vocab import write_vocabulary
from tunelab.methods.trained import save_merged

Quant = Literal["f16", "q8_0", "f32"]
LLAMA_ARCH_TYPES = ("llama", "mistral")
"""model_types written as llama.cpp's llama architecture: Mistral is Llama's layout (llama.cpp's own converter
writes it so too); its sliding window is not kept, which changes nothing for contexts within the window."""
QUANTS: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


@dataclass(frozen=True)
class GGUFSummary:
    """What `verify_gguf` found in a written file."""

    path: Path
    tensors: dict[str, tuple[tuple[int, ...], str]]
    """GGUF tensor name -> (shape in PyTorch order, GGML type name)."""
    metadata: dict[str, object]
    """Scalar and string metadata (arrays are left out, their lengths are in `array_lengths`)."""
    array_lengths: dict[str, int]


def write_gguf(hf_folder: str | Path, out: str | Path, quant: Quant = "f16") -> Path:
    """Convert the Llama HF folder `hf_folder` (config, safetensors, tokenizer) into the GGUF file `out`.

    `quant`: "f16" or "q8_0" for 2-D weights (norms stay f32, as llama.cpp keeps them); "f32" for no loss.
    Q8_0 works on blocks of 32 values along a row, so a weight whose rows are not a multiple of 32 falls back to
    f16, as llama.cpp's converter does.
    """
    hf_folder, out = Path(hf_folder), Path(out)
    if quant not in QUANTS:
        raise ExportError(f"GGUF quantisation '{quant}' is not supported. Choose one of: {', '.join(QUANTS)}.")
    config = AutoConfig.from_pretrained(hf_folder)
    _check_supported(config, hf_folder)
    config = cast(LlamaConfig, config)  # checked: llama or mistral, whose configs have LlamaConfig's fields
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32, use_safetensors=True)
    qtype, file_type = QUANTS[quant]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    then = f"run the command again ('{out}' was left as it was)."
    try:
        with disk_full_as_error(out, f"the GGUF file ({out})", None, then):
            writer = gguf.GGUFWriter(tmp, arch="llama")
            _write_model_metadata(writer, config, hf_folder.name, file_type)
            write_vocabulary(writer, tokenizer, config.vocab_size)
            _write_tensors(writer, model, config, qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            fsync_file(tmp)
            # Renamed into place last, so a crash never leaves a file that looks complete.
            tmp.replace(out)
            fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def verify_gguf(path: str | Path) -> GGUFSummary:
    """Read `path` back with `gguf.GGUFReader`: tensor names, shapes, types and metadata."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: (tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors}
    metadata: dict[str, object] = {}
    lengths: dict[str, int] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            lengths[key] = len(field.data)
        else:
            metadata[key] = field.contents()
    return GGUFSummary(path=Path(path), tensors=tensors, metadata=metadata, array_lengths=lengths)


def _check_supported(config: object, folder: Path) -> None:
    model_type = getattr(config, "model_type", "?")
    problems = []
    if model_type not in LLAMA_ARCH_TYPES:
        problems.append(f"model_type is '{model_type}'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("it has attention or MLP biases")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        problems.append(f"it uses rope scaling '{rope.get('rope_type')}'")
    if problems:
        raise ExportError(
            f"GGUF export of '{folder}' is not supported: {'; '.join(problems)}. tunelab writes plain Llama-"
            "architecture models (Llama, SmolLM2, TinyLlama, Mistral, ...). Export with --format hf and convert it "
            "with llama.cpp's convert_hf_to_gguf.py instead."
        )


def _rope_theta(config: object) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _write_model_metadata(
    writer: gguf.GGUFWriter, config: LlamaConfig, name: str, file_type: gguf.LlamaFileType
) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp rotates interleaved pairs (x0, x1), HF rotates halves (x0, x_d/2): reorder Q/K rows to match."""
    pairs = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def _write_tensors(
    writer: gguf.GGUFWriter, model: torch.nn.Module, config: LlamaConfig, qtype: gguf.GGMLQuantizationType
) -> None:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp ties the output to token_embd when output.weight is absent
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ExportError(f"No GGUF name for tensor '{hf_name}': the model is not a plain Llama.")
        data = tensor.detach().float().numpy()
        if base.endswith("q_proj"):
            data = _permute_rows(data, config.num_attention_heads)
        elif base.endswith("k_proj"):
            data = _permute_rows(data, config.num_key_value_heads or config.num_attention_heads)
        writer_name = f"{gguf_name}.{suffix}"
        _add_tensor(writer, writer_name, data, qtype if data.ndim == 2 else gguf.GGMLQuantizationType.F32)


def _add_tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> None:
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] != 0:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def export_gguf(spec: str, out: str | Path, quant: Quant = "f16") -> Path:
    """Merge `spec` and write it as one GGUF file; the file is read back once to check it is whole."""
    with tempfile.TemporaryDirectory(prefix="tunelab-gguf-") as tmp:
        merged = save_merged(spec, Path(tmp) / "merged")
        path = write_gguf(merged, out, quant)
    verify_gguf(path)
    return path
