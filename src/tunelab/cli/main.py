"""The `tunelab` command: parse (`args.build_parser`), then run the command's handler, a function of one of the
command modules here (`train`, `tune`, `eval`, `infer`, `export`, `serve`, `monitor`, `ui`, `data`, `models`), each
thin: it calls one recipe or service and prints.

The handler's module is imported only when its command runs: the modules import torch and transformers (5 s on
a 2-core CPU), which `tunelab --help` or a mistyped flag should not wait for. User mistakes (`TunelabError`) print
as one paragraph and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

from rich.console import Console
from rich.text import Text

from tunelab.cli.args import build_parser
from tunelab.core.errors import TunelabError

err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    # Library chatter (weight-loading bars, advisory warnings) would bury tunelab's own progress and tables.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    module, _, function = args.handler.partition(":")
    try:
        handler = getattr(importlib.import_module(f"tunelab.cli.{module}"), function)
        handler(args)
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
