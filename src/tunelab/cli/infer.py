"""`tunelab generate` (one-shot answers) and `tunelab chat` (an interactive, streamed conversation with a model,
a run, or a running server)."""

from __future__ import annotations

import argparse
import os
from functools import partial

from rich.console import Console

from tunelab.core.types import Message
from tunelab.methods.trained import load_trained
from tunelab.models.generate import generate_answers, stream_reply
from tunelab.serve.client import stream_remote_reply

console = Console()


def generate(args: argparse.Namespace) -> None:
    model, tokenizer = load_trained(args.model)
    prompts = [[Message("user", p)] for p in args.prompt]
    answers = generate_answers(
        model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, system_prompt=args.system, show_progress=False
    )
    for prompt, answer in zip(args.prompt, answers, strict=True):
        console.print(f"[bold]> {prompt}[/]\n{answer}")


def chat(args: argparse.Namespace) -> None:
    if args.url:  # a running `tunelab serve` (or any OpenAI-compatible server); MODEL is the served model id
        key = args.api_key or os.environ.get("TUNELAB_API_KEY")
        reply_to = partial(stream_remote_reply, args.url, args.model, max_tokens=args.max_new_tokens, api_key=key)
    else:
        model, tokenizer = load_trained(args.model)
        reply_to = partial(stream_reply, model, tokenizer, max_new_tokens=args.max_new_tokens)
    history: list[Message] = []
    console.print("Chat with the model. Empty line or Ctrl-D to quit; /reset clears the conversation.")
    while True:
        try:
            text = console.input("[bold cyan]you> [/]").strip()
        except EOFError:
            break
        if not text:
            break
        if text == "/reset":
            history = []
            continue
        history.append(Message("user", text))
        console.print("[bold green]model> [/]", end="")
        reply = ""
        for piece in reply_to(history, temperature=args.temperature, system_prompt=args.system):
            reply += piece
            console.print(piece, end="", markup=False, highlight=False)
        console.print()
        history.append(Message("assistant", reply.strip()))
