"""The k-shot baseline of `tunelab eval --shots K`: held-out examples with demonstrations from a pool file.

The scored examples are the same held-out rows a fine-tuned model is scored on, so the table `tunelab eval` prints
for `--shots 8` compares directly with the one it prints for a run folder: is fine-tuning worth it?
"""

from __future__ import annotations

from pathlib import Path

from tunelab.core.errors import DataError
from tunelab.data.load import load_examples
from tunelab.data.records import Example
from tunelab.eval.fewshot.context import ContextLimit
from tunelab.eval.fewshot.prompts import Embed, Layout, Strategy, encoder_embed, kshot_examples
from tunelab.models.load import load_model, load_tokenizer

DEFAULT_EMBEDDER = "minilm-l6"


def load_embedder(source: str = DEFAULT_EMBEDDER) -> Embed:
    """An `embed` function from an encoder source (embedded name or HF folder), for `similar` shots."""

    return encoder_embed(load_model(source), load_tokenizer(source))


def with_pool_shots(
    examples: list[Example],
    pool_file: str | Path | None,
    k: int,
    *,
    selection: Strategy = "random",
    seed: int = 0,
    layout: Layout = "turns",
    instruction: str | None = None,
    embedder: str = DEFAULT_EMBEDDER,
    limit: ContextLimit | None = None,
) -> list[Example]:
    """`examples` with k demonstrations each, drawn from the solved examples of `pool_file` (k = 0: unchanged);
    `limit`: the model's context and the overflow policy (`fewshot.context`)."""
    if k == 0:
        return list(examples)
    if pool_file is None:
        raise DataError(
            f"--shots {k} needs demonstrations to choose from: give --shot-pool FILE, e.g. the training split "
            "(chat rows with a reference answer; rows equal to a question are never shown for it)."
        )

    pool = load_examples([str(pool_file)]).examples
    if not pool:
        raise DataError(f"The shot pool '{pool_file}' holds no usable rows. Give a file of chat rows with answers.")
    embed = load_embedder(embedder) if selection == "similar" else None
    return kshot_examples(
        examples, pool, k, strategy=selection, seed=seed, embed=embed, layout=layout, instruction=instruction,
        limit=limit,
    )  # fmt: skip
