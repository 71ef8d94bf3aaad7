"""The `tunelab serve` sub-command (thin: flags → `ServeConfig` and `build_state`, then uvicorn)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tunelab.core.errors import TunelabError


def _adapter(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter takes NAME=PATH, got '{text}'")
    return name, Path(path)


def cmd_serve(args: argparse.Namespace) -> None:
    import torch

    from tunelab.serve.config import ServeConfig
    from tunelab.serve.server import build_state, serve_forever

    keys = list(args.api_key or [])
    keys += [k for k in os.environ.get("TUNELAB_API_KEYS", "").split(",") if k.strip()]
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        raise TunelabError(
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
    )
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    state = build_state(
        args.model, config, adapters=dict(args.adapter or []), adapter_dir=args.adapter_dir,
        embedding_model=args.embedding_model, dtype=torch.float32 if args.int8 else dtype, int8=args.int8,
        trust_remote_code=args.trust_remote_code, name=args.name, device=args.device,
    )  # fmt: skip
    print(f"serving {', '.join(state.model_names())} on http://{args.host}:{args.port}/v1", flush=True)
    serve_forever(state, args.host, args.port)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    """Register `tunelab serve` on the CLI's sub-parsers."""
    help_text = "Serve a run or model over an OpenAI-compatible HTTP API."
    p = sub.add_parser("serve", help=help_text, description=help_text)
    p.set_defaults(func=cmd_serve)
    p.add_argument("model", help="run folder, embedded model name, HF folder or .gguf file")
    p.add_argument("--name", help="model id clients use (default: the run or folder name)")
    p.add_argument("--adapter", action="append", type=_adapter, metavar="NAME=PATH", help="LoRA adapter to serve")
    p.add_argument("--adapter-dir", type=Path, help="folder whose PEFT adapters load on first request by name")
    p.add_argument("--embedding-model", help="encoder for /v1/embeddings next to the LM (e.g. minilm-l6)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", help="accepted Bearer key (repeatable; or TUNELAB_API_KEYS)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"], help="weights dtype (default bf16)")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of Linear layers (CPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="waiting sequences before 429")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request before 504")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder")
