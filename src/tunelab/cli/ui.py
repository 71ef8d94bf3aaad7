"""`tunelab ui`: the web dashboard over a runs folder, served by uvicorn in the foreground."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from tunelab.core.errors import ConfigError
from tunelab.ui.app import LOOPBACK, create_app
from tunelab.ui.state import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The dashboard's settings from the flags; a non-local bind without a token is refused."""
    token = args.token or os.environ.get("TUNELAB_UI_TOKEN") or None
    if token is not None and not token.strip():
        raise ConfigError("--token is empty, which would let anyone in. Give the token itself, or leave it out.")
    if args.host not in LOOPBACK and token is None:
        raise ConfigError(
            f"Refusing to serve the dashboard on {args.host} without a token: anyone who can reach it could start "
            "runs and read run folders. Give --token T (or TUNELAB_UI_TOKEN), or bind to 127.0.0.1."
        )
    runs = Path(args.runs)
    if runs.exists() and not runs.is_dir():
        raise ConfigError(f"--runs '{runs}' is a file; give the folder that holds run folders.")
    runs.mkdir(parents=True, exist_ok=True)
    data_dirs = [Path(d) for d in args.data_dir or []]
    missing = [str(d) for d in data_dirs if not d.is_dir()]
    if missing:
        raise ConfigError(f"--data-dir: no such folder: {', '.join(missing)}.")
    return Settings(runs=runs, data_dirs=data_dirs, token=token)


def ui(args: argparse.Namespace) -> None:
    settings = settings_from(args)
    app = create_app(settings)
    where = f"http://{args.host}:{args.port}/" + (f"?token={settings.token}" if settings.token else "")
    print(f"dashboard over {settings.runs.resolve()} on {where}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        app.state.dashboard.close()
