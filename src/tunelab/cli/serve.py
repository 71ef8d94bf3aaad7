"""`tunelab serve`: flags -> `ServeConfig` and `build_state`, then uvicorn in the foreground."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from tunelab.core.duration import seconds
from tunelab.core.errors import ConfigError
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import ServeError, build_state, serve_forever
from tunelab.serve.traffic import PII_KINDS, LogSettings


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
        long_prompts=args.long_prompts,
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
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    state = build_state(
        args.model, config, adapters=dict(args.adapter or []), adapter_dir=args.adapter_dir,
        embedding_model=args.embedding_model, dtype=torch.float32 if args.int8 else dtype, int8=args.int8,
        trust_remote_code=args.trust_remote_code, name=args.name, device=args.device, log=log_settings(args),
        champion=Path(args.champion) if args.champion else None,
    )  # fmt: skip
    print(f"serving {', '.join(state.model_names())} on http://{args.host}:{args.port}/v1", flush=True)
    if state.traffic is not None:
        print(f"logging answers and feedback to {state.traffic.where}; review page: /review", flush=True)
    serve_forever(state, args.host, args.port)


def log_settings(args: argparse.Namespace) -> LogSettings | None:
    """The traffic log's settings from the --log* flags (None without --log)."""
    if not args.log:
        return None
    kinds = [] if args.log_mask.strip().lower() == "none" else [k.strip() for k in args.log_mask.split(",") if k]
    unknown = [k for k in kinds if k not in PII_KINDS]
    if unknown:
        raise ConfigError(f"--log-mask: '{unknown[0]}' is not a kind of personal data tunelab masks; give a "
                          f"comma-separated list of {', '.join(PII_KINDS)}, or none.")  # fmt: skip
    for flag, value in (("--log-max-rows", args.log_max_rows), ("--log-queue", args.log_queue)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1; got {value}.")
    try:
        max_age = None if args.log_max_age is None else float(seconds(args.log_max_age))
    except ValueError as exc:
        raise ConfigError(f"--log-max-age: {exc}.") from None
    return LogSettings(
        db=args.log, mask=tuple(kinds), max_rows=args.log_max_rows, max_age=max_age, queue_size=args.log_queue,
        server=args.log_server or f"{args.host}:{args.port}",
    )  # fmt: skip
