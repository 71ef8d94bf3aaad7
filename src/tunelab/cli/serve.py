"""`tunelab serve`: flags -> `ServeConfig` and `build_state`, then uvicorn in the foreground."""

from __future__ import annotations

import argparse
import os

import torch

from tunelab.serve.config import ServeConfig
from tunelab.serve.server import ServeError, build_state, serve_forever


def serve(args: argparse.Namespace) -> None:
    keys = list(args.api_key or [])
    if any(not k.strip() for k in keys):
        # Typically `--api-key "$KEY"` with KEY unset: serving would look protected and accept anyone.
        raise ServeError(
            "--api-key was given an empty (or whitespace-only) key, which would let anyone in. Give the key "
            "itself (--api-key sk-...), or leave --api-key out to serve on 127.0.0.1 without keys."
        )
    keys += [k.strip() for k in os.environ.get("TUNELAB_API_KEYS", "").split(",") if k.strip()]
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        raise ServeError(
            f"Refusing to serve on {args.host} without an API key: anyone who can reach it could use the model. "
            "Give --api-key KEY (or TUNELAB_API_KEYS=k1,k2), or bind to 127.0.0.1."
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ServeConfig(
        api_keys=keys,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        request_timeout=args.timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        allowed_hosts=list(args.allow_host or []),
        max_pattern_chars=args.max_pattern_chars,
        max_pattern_repeat=args.max_pattern_repeat,
        constraint_timeout=args.constraint_timeout,
        constraint_memory_mb=args.constraint_memory_mb,
        constraint_workers=args.constraint_workers,
    )
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    state = build_state(
        args.model, config, adapters=dict(args.adapter or []), adapter_dir=args.adapter_dir,
        embedding_model=args.embedding_model, dtype=torch.float32 if args.int8 else dtype, int8=args.int8,
        trust_remote_code=args.trust_remote_code, name=args.name, device=args.device,
    )  # fmt: skip
    print(f"serving {', '.join(state.model_names())} on http://{args.host}:{args.port}/v1", flush=True)
    serve_forever(state, args.host, args.port)
