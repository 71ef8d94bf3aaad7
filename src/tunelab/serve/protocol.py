"""Request bodies of the OpenAI-compatible routes, validated with pydantic.

Fields follow OpenAI's API reference; `regex` and `banned_words` are tunelab extensions (send them with the
openai client's `extra_body`). Unknown fields are ignored, as OpenAI-compatible servers usually do, so newer
clients keep working; fields we cannot honour (`logprobs`, `tools`) are rejected instead of silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.serve.token_ids import token_id_problem

SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit integer, as OpenAI documents `seed`
MAX_STOP_CHARS = 500


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationFields(_Request):
    """Sampling and control fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    user: str | None = None
    regex: str | None = None
    """tunelab extension: the output must match this regular expression in full."""
    banned_words: list[str] | None = None
    """tunelab extension: words the output must not contain (blocked at the token level)."""

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not s or len(s) > MAX_STOP_CHARS for s in stops)):
            raise ValueError(f"stop takes at most 4 non-empty strings of at most {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            # isascii: str.isdigit alone also takes "²", which int() refuses; no id has more than 12 digits.
            if not (key.isascii() and key.isdigit() and len(key) <= 12):
                raise ValueError(f"logit_bias keys are token ids; got '{key[:20]}'")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values lie in [-100, 100]; got {bias} for token {key}")
        return value

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ContentPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(_Request):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None


class CompletionRequest(GenerationFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _token_ids_are_integers(cls, value: Any) -> Any:
        # Before pydantic converts: it would read `true` as id 1 and `3.0` as id 3. Ranges: `Embedder.check_ids`.
        problem = token_id_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value
