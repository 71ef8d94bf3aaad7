"""The server's OpenAPI document (GET /openapi.json), with the request bodies the routes read.

The routes read their JSON bodies themselves (see `tunelab.serve.app`), so FastAPI does not know them; this adds
each body's schema from the same pydantic models that validate it, and OpenAI's error shape as every route's
error answer. Clients and API fuzzers read it to know what to send.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tunelab.serve.feedback import FeedbackRequest
from tunelab.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/feedback": FeedbackRequest,
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes, request bodies and error answers."""
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    _, defs = models_json_schema(
        [(model, "validation") for model in BODIES.values()], ref_template="#/components/schemas/{model}"
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    error = {"description": "An error in OpenAI's format", "content": _json({"$ref": "#/components/schemas/Error"})}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            operation.setdefault("responses", {})["default"] = error
            if method == "post" and path in BODIES:
                ref = {"$ref": f"#/components/schemas/{BODIES[path].__name__}"}
                operation["requestBody"] = {"required": True, "content": _json(ref)}
    return document


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}
