"""Prompts longer than the context, answered hierarchically: the plan (parts within the budget, the request kept,
notes in order, more rounds when the notes are still too long, the errors), eval with `long_prompts`, and a real
server that answers an over-long chat request from the model's notes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import openai
import pytest
import torch

from tunelab.cli.main import main as cli_main
from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.evaluate import generation_metrics
from tunelab.models.condense import MAX_LEVELS, Condenser, condense
from tunelab.models.load import load_model, load_tokenizer
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, serve_in_thread

CONTEXT = 640
QUESTION = "What colour is item 37?"
FACTS = "".join(f"Item {k} is {('red', 'blue', 'green')[k % 3]} and sits on shelf {k % 7}.\n" for k in range(120))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a context of 640 positions: room for the note prompt in its 300-token vocabulary, which
    spells the instructions out in many short tokens; the facts are still five times longer."""
    folder = tmp_path_factory.mktemp("wide")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    return folder


def _keyword_notes(asks: list[list[Message]]) -> list[str]:
    """A note-taker that keeps the part's lines naming the item the request asks about (exact, so checkable)."""
    notes = []
    for ask in asks:
        text = ask[-1].content
        part = text.split("---\n", 1)[1].split("\n--- end of part ---")[0]
        item = re.search(r"item (\d+)", text.rsplit("Request:", 1)[1]).group(1)  # type: ignore[union-attr]
        kept = [line for line in part.splitlines() if line.startswith(f"Item {item} ")]
        notes.append(" ".join(kept) or "nothing")
    return notes


def test_a_long_message_is_cut_into_parts_and_replaced_by_the_notes_and_its_request(tokenizer) -> None:
    condenser = Condenser(tokenizer, budget=600, note_tokens=48, request_tokens=24)
    messages = [Message("system", "Answer briefly."), Message("user", FACTS + "\n" + QUESTION)]
    assert condenser.count(messages) > 4 * condenser.budget
    plan = condenser.plan(messages)
    assert plan is not None and len(plan.chunks) >= 4
    assert "".join(plan.chunks).replace("\n", "") in FACTS.replace("\n", "")  # in order, nothing invented
    assert all(condenser.count(ask) + condenser.note_tokens <= condenser.budget for ask in plan.asks)
    done = condense(condenser, messages, _keyword_notes)
    assert done.levels == 1 and done.parts == len(plan.chunks)
    assert done.messages[0] == messages[0]  # the rest of the conversation as it was
    final = done.messages[1].content
    assert "Item 37 is blue and sits on shelf 2." in final and final.endswith("\n\n" + QUESTION)
    assert "Item 36" not in final and condenser.count(done.messages) <= condenser.budget
    assert condense(condenser, [Message("user", "short " + QUESTION)], _keyword_notes).levels == 0


def test_notes_still_too_long_take_another_round_then_stop_with_an_error(tokenizer) -> None:
    condenser = Condenser(tokenizer, budget=600, note_tokens=48, request_tokens=24)
    messages = [Message("user", FACTS + "\n" + QUESTION)]
    rounds: list[int] = []

    def openings(asks: list[list[Message]]) -> list[str]:  # the first eighth of each part: one round is not enough
        rounds.append(len(asks))
        parts = [ask[-1].content.split("---\n", 1)[1].split("\n--- end of part ---")[0] for ask in asks]
        return [part[: len(part) // 8] for part in parts]

    done = condense(condenser, messages, openings)
    assert done.levels >= 2 and rounds[1] < rounds[0] and condenser.count(done.messages) <= condenser.budget

    with pytest.raises(DataError, match=f"After {MAX_LEVELS} rounds"):
        condense(condenser, messages, lambda asks: [ask[-1].content for ask in asks])  # notes never shorter
    crowded = [Message("system", "Be precise. " * 150), Message("user", FACTS)]
    with pytest.raises(DataError, match="leaves no room for parts"):
        condense(condenser, crowded, _keyword_notes)


def test_eval_refuses_or_condenses_a_prompt_past_the_context(
    model_dir: Path, tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = load_model(str(model_dir))
    long_row = Example([Message("user", FACTS + QUESTION), Message("assistant", "green")], origin="long.jsonl:1")
    short_row = Example([Message("user", QUESTION), Message("assistant", "green")], origin="long.jsonl:2")
    kwargs = {"max_examples": None, "max_new_tokens": 8, "batch_size": 4, "show_progress": False}
    with pytest.raises(DataError, match=r"1 prompt\(s\) are longer .* long\.jsonl:1 .*--long-prompts hierarchical"):
        generation_metrics(model, tokenizer, [long_row, short_row], **kwargs)
    metrics, rows = generation_metrics(model, tokenizer, [long_row, short_row], long_prompts="hierarchical", **kwargs)
    assert metrics["prompts_condensed"] == 1 and rows[0]["condensed_parts"] >= 2 and "condensed_parts" not in rows[1]
    assert rows[0]["prompt"] == FACTS + QUESTION  # the row shows what was asked, not the notes

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"messages": [{"role": m.role, "content": m.content} for m in long_row.messages]}))
    assert cli_main(["eval", str(model_dir), "--data", str(data), "--max-new-tokens", "8"]) == 2
    assert "--long-prompts hierarchical" in " ".join(capsys.readouterr().err.split())


def test_the_server_answers_an_over_long_chat_from_its_notes(model_dir: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ServeConfig(max_tokens_limit=32, max_batch_size=4, long_prompts="hierarchical")
    running = serve_in_thread(build_state(str(model_dir), config, dtype=torch.float32, name="tiny"))
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": FACTS + QUESTION}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and 0 < reply.usage.prompt_tokens <= CONTEXT - 8  # the condensed prompt
    finally:
        running.stop()
        torch.set_num_threads(threads)
