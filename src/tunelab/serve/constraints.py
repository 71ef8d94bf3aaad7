"""Constrained decoding: a JSON schema or a regex becomes a token-level automaton (outlines-core) that masks logits.

outlines-core compiles a regex over the model's whole vocabulary into an index (state -> allowed tokens) once;
each sequence then walks it with a cheap `Guide`. Compiling costs from milliseconds (tiny vocabularies) to seconds
(50k tokens, large schemas), so indexes are cached per (tokenizer, pattern).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import cast

from outlines_core import Guide, Index, Vocabulary
from outlines_core import json_schema as outlines_schema  # the module as the package exports it: checkers see it
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tunelab.core.errors import TunelabError

# Any JSON object: the schema outlines-core turns into a (depth-limited) regex for `response_format: json_object`.
ANY_OBJECT_SCHEMA = '{"type": "object"}'
_INDEX_CACHE_SIZE = 32


class ConstraintError(TunelabError):
    """A JSON schema or regex that cannot be compiled into a decoding constraint."""


class GrammarConstraint:
    """One sequence's position in a compiled pattern; implements `tunelab.serve.sampling.Constraint`."""

    def __init__(self, index: Index, eos_token_id: int) -> None:
        self.guide = Guide(index)
        self.eos_token_id = eos_token_id

    def allowed(self) -> list[int]:
        return self.guide.get_tokens()

    def advance(self, token_id: int) -> None:
        if not self.guide.is_finished():
            self.guide.advance(token_id)

    def is_finished(self) -> bool:
        return self.guide.is_finished()


class ConstraintCompiler:
    """Builds `GrammarConstraint`s for one tokenizer, caching the compiled indexes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        self.vocabulary = _vocabulary(tokenizer, eos_token_id)
        self._cache: OrderedDict[str, Index] = OrderedDict()
        self._lock = threading.Lock()

    def json_schema(self, schema: dict | str) -> GrammarConstraint:
        """Output that parses as JSON and validates against `schema` (a JSON-schema dict or its text)."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        try:
            regex = outlines_schema.build_regex_from_schema(text)
        except Exception as exc:  # outlines-core raises ValueError or its own error types for bad schemas
            raise ConstraintError(
                f"The JSON schema in response_format cannot be used for constrained decoding: {exc}. "
                "Supported: objects, arrays, strings (with pattern/format), numbers, integers, booleans, enum, "
                "const, anyOf and $ref within the schema."
            ) from None
        return self.regex(regex, what="response_format json_schema")

    def regex(self, pattern: str, what: str = "regex") -> GrammarConstraint:
        """Output that matches the regular expression `pattern` in full."""
        with self._lock:
            index = self._cache.get(pattern)
            if index is None:
                try:
                    index = Index(pattern, self.vocabulary)
                except Exception as exc:  # a pattern outlines-core cannot compile, or no token sequence matches
                    raise ConstraintError(
                        f"The {what} cannot be compiled into a decoding constraint: {exc}. Check the pattern "
                        "(Rust regex syntax, no look-around or back-references)."
                    ) from None
                self._cache[pattern] = index
                if len(self._cache) > _INDEX_CACHE_SIZE:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(pattern)
        return GrammarConstraint(index, self.eos_token_id)


def _vocabulary(tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> Vocabulary:
    """Each token's text as bytes (byte-level BPE spells bytes as printable characters; undo that)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    fast = getattr(tokenizer, "is_fast", False)  # backed by `tokenizers`, whose spec names the pre-tokenizer
    byte_level = "ByteLevel" in cast(PreTrainedTokenizerFast, tokenizer).backend_tokenizer.to_str() if fast else False
    mapping: dict[bytes, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token in special or token_id == eos_token_id:
            continue
        if byte_level and all(c in to_byte for c in token):
            data = bytes(to_byte[c] for c in token)
        else:
            # SentencePiece-style vocabularies spell a leading space as U+2581 and bytes as <0xNN>.
            if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                data = bytes([int(token[3:5], 16)])
            else:
                data = token.replace("\u2581", " ").encode()
        mapping.setdefault(data, []).append(token_id)
    return Vocabulary(eos_token_id, mapping)
