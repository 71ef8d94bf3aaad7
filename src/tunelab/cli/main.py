"""The `tunelab` command: one sub-command per stage. Each is thin and calls library functions.

User mistakes (`TunelabError`) print as one paragraph and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.text import Text

from tunelab.cli.data import add_data_commands
from tunelab.cli.export import add_export_command
from tunelab.cli.merge_models import add_merge_models_command
from tunelab.cli.serve import add_serve_command
from tunelab.core.errors import TunelabError

console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    # Library chatter (weight-loading bars, advisory warnings) would bury tunelab's own progress and tables.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def cmd_train(args: argparse.Namespace) -> None:
    from tunelab.config import load_config
    from tunelab.recipes.run import run_training
    from tunelab.recipes.runs import CONFIG_FILE, is_run

    overrides = list(args.set or [])
    config_path = Path(args.config) if args.config else None
    if args.resume and config_path and is_run(config_path):
        config_path = config_path / CONFIG_FILE
    if args.data:
        overrides.append(f"data.train={Path(args.data).resolve()}")
    if config_path is None and not args.data:
        raise TunelabError(
            "Give a config file (`tunelab train my.yaml`) or a data file (`tunelab train --data x.jsonl`)."
        )
    if args.resume and config_path and (config_path / "continual.yaml").is_file():  # a continual run's folder
        import yaml

        # Read as written (no path resolution against the run folder); a run without output.name was named after
        # its config file, of which only the name (stem) is used.
        folder = config_path.resolve()
        raw = yaml.safe_load((folder / "continual.yaml").read_text())
        cfg = load_config(None, [f"output.dir={folder.parent}", *overrides], base=raw)
        config_path = Path(f"{folder.name}.yaml")
    else:
        cfg = load_config(config_path, overrides)
    run_training(cfg, config_path=config_path, resume=args.resume, console=console)


def cmd_validate(args: argparse.Namespace) -> None:
    from tunelab.config import load_config

    cfg = load_config(args.config, list(args.set or []))
    missing = [p for p in cfg.data.train + cfg.data.validation if not Path(p).is_file()]
    if missing:
        raise TunelabError(f"{args.config}: data file(s) not found: {', '.join(missing)}. Fix data.train/validation.")
    console.print(
        f"[green]ok[/]: {args.config} is valid (method {cfg.method.name}, model {cfg.model.source})", soft_wrap=True
    )


def cmd_lr_find(args: argparse.Namespace) -> None:
    from tunelab.config import load_config
    from tunelab.recipes.lr_find import run_lr_find

    cfg = load_config(args.config, list(args.set or []))
    run_lr_find(cfg, config_path=Path(args.config), start=args.start, end=args.end, steps=args.steps, console=console)


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from tunelab.data.load import load_examples
    from tunelab.eval.evaluate import generation_metrics, metrics_table, write_predictions
    from tunelab.recipes.runs import is_run, load_for_inference, run_config

    if is_run(args.model) and run_config(Path(args.model)).objective.name == "classify":  # a task head: no generation
        from tunelab.objectives.classify.objective import evaluate_file

        metrics, predictions = evaluate_file(args.model, args.data, args.batch_size)
        out = write_predictions(predictions, args.out or "predictions.jsonl")
        console.print(metrics_table({args.model: metrics}, title=f"{args.data} ({len(predictions)} examples)"))
        console.print(f"per-example predictions: {out}")
        return
    examples = load_examples([args.data]).examples
    if not examples:
        raise TunelabError(f"'{args.data}' holds no usable rows to evaluate on.")
    model, tokenizer = load_for_inference(args.model, dtype=torch.float32)
    if args.shots:  # an in-context baseline: the same rows and metrics, k demonstrations before each question
        from tunelab.eval.fewshot.baseline import with_pool_shots
        from tunelab.eval.fewshot.context import ContextLimit, context_summary

        limit = ContextLimit.for_model(model, tokenizer, args.max_new_tokens, args.shot_overflow, args.system)
        examples = with_pool_shots(examples, args.shot_pool, args.shots, selection=args.shot_selection,
                                   seed=args.seed, layout=args.shot_layout, embedder=args.shot_embedder,
                                   limit=limit)  # fmt: skip
        fit = context_summary(examples)
        if fit["prompts_shortened"]:
            console.print(f"{fit['prompts_shortened']} prompt(s) were over the model's context: {fit['shots_dropped']} "
                          "demonstration(s) left out (--shot-overflow drop)")  # fmt: skip
    metrics, predictions = generation_metrics(
        model, tokenizer, examples, max_examples=args.max_examples, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, system_prompt=args.system, precision="bf16" if args.bf16 else "fp32",
    )  # fmt: skip
    out = Path(args.out or "predictions.jsonl")
    write_predictions(predictions, out)
    console.print(metrics_table({args.model: metrics}, title=f"{args.data} ({len(predictions)} examples)"))
    console.print(f"per-example predictions: {out}")


def cmd_merge(args: argparse.Namespace) -> None:
    from tunelab.export.hf import merge_run

    out = merge_run(args.run, args.out)
    console.print(f"merged model written to {out} (loads with transformers' AutoModelForCausalLM)")


def cmd_generate(args: argparse.Namespace) -> None:
    from tunelab.core.types import Message
    from tunelab.models.generate import generate_answers
    from tunelab.recipes.runs import load_for_inference

    model, tokenizer = load_for_inference(args.model)
    prompts = [[Message("user", p)] for p in args.prompt]
    answers = generate_answers(
        model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, system_prompt=args.system, show_progress=False
    )
    for prompt, answer in zip(args.prompt, answers, strict=True):
        console.print(f"[bold]> {prompt}[/]\n{answer}")


def cmd_chat(args: argparse.Namespace) -> None:
    from functools import partial

    from tunelab.core.types import Message
    from tunelab.models.generate import stream_reply
    from tunelab.recipes.runs import load_for_inference
    from tunelab.serve.client import stream_remote_reply

    if args.url:  # a running `tunelab serve` (or any OpenAI-compatible server); MODEL is the served model id
        key = args.api_key or os.environ.get("TUNELAB_API_KEY")
        reply_to = partial(stream_remote_reply, args.url, args.model, max_tokens=args.max_new_tokens, api_key=key)
    else:
        model, tokenizer = load_for_inference(args.model)
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


def cmd_models(args: argparse.Namespace) -> None:
    from rich.table import Table

    from tunelab.models.registry import EMBEDDED

    table = Table(title="Embedded models (use as model.source)")
    for column in ("name", "kind", "package", "description"):
        table.add_column(column)
    for m in EMBEDDED.values():
        table.add_row(m.name, m.kind, m.package.replace("_", "-"), m.description)
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune language models end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("train", cmd_train, "Fine-tune a model as a config says; writes a run folder.")
    p.add_argument("config", nargs="?", help="YAML config (or, with --resume, a run folder)")
    p.add_argument("--data", help="training data file (a config naming only the data is optional)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.learning_rate=1e-4")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")

    p = add("validate", cmd_validate, "Check a config without running it.")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")

    p = add("lr-find", cmd_lr_find, "Learning-rate range test: the loss as the rate grows; a suggested rate.")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps from start to end (default 100)")

    p = add("eval", cmd_eval, "Generate answers for a data file and score them against its references.")
    p.add_argument("model", help="run folder, embedded model name, HF folder or .gguf file")
    p.add_argument("--data", required=True, help="JSONL with reference answers (last assistant turn)")
    p.add_argument("--out", help="where to write per-example predictions (default predictions.jsonl)")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--system", help="system prompt for every example")
    p.add_argument("--bf16", action="store_true", help="generate under bf16 autocast (faster on CPUs with AMX)")
    p.add_argument("--shots", type=int, default=0, help="k demonstrations before each question (0: zero-shot)")
    p.add_argument("--shot-pool", help="solved examples to draw demonstrations from (e.g. the training file)")
    p.add_argument("--shot-selection", choices=["random", "similar"], default="random",
                   help="demonstrations at random (seeded) or the most similar by embedding")  # fmt: skip
    p.add_argument("--shot-layout", choices=["turns", "inline"], default="turns",
                   help="demonstrations as chat turns, or inline in one user message (Input:/Output:)")  # fmt: skip
    p.add_argument("--shot-embedder", default="minilm-l6", help="encoder for --shot-selection similar")
    p.add_argument("--shot-overflow", choices=["error", "drop"], default="error",
                   help="a prompt longer than the model's context: stop (error), or leave out the demonstrations "
                   "farthest from the question and report how many (drop)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of random demonstrations")

    p = add("merge", cmd_merge, "Merge a run's adapter into its base model: a standalone HF folder.")
    p.add_argument("run")
    p.add_argument("--out", help="output folder (default RUN/merged)")

    p = add("generate", cmd_generate, "Answer one or more prompts.")
    p.add_argument("model")
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--system")

    p = add("chat", cmd_chat, "Chat with a model or run in the terminal.")
    p.add_argument("model")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system")
    p.add_argument("--url", help="talk to a running server (e.g. http://127.0.0.1:8000); MODEL is its model id")
    p.add_argument("--api-key", help="Bearer key for --url (default: $TUNELAB_API_KEY)")

    add("models", cmd_models, "List the embedded models.")
    add_export_command(sub)
    add_serve_command(sub)
    add_data_commands(sub)
    add_merge_models_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except TunelabError as exc:
        # Text, not markup: messages quote user data such as "messages[0]", which markup would swallow.
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
