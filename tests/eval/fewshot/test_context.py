"""k-shot prompts against the model's context: measured as generation renders them, refused when too long (the
default), or shortened from the farthest demonstration and reported (`drop`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.fewshot.context import ContextLimit, context_summary, context_window
from tunelab.eval.fewshot.prompts import kshot_examples
from tunelab.models.chat import render

SENTENCE = "the cat sat on the mat and the dog ran on the mat"


def _chat(question: str, answer: str, origin: str) -> Example:
    return Example(messages=[Message("user", question), Message("assistant", answer)], origin=origin)


POOL = [_chat(f"{SENTENCE} {w}", w, f"pool:{i}") for i, w in enumerate(["one", "two", "three", "five"] * 2)]
QUERIES = [_chat("what is color of sky", "blue", "q:0"), _chat("what is color of cat", "red", "q:1")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from tunelab.models.load import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


def _tokens(tokenizer, example: Example) -> int:
    text = render(tokenizer, example.prompt_and_answer()[0], add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_limit_is_the_models_positions_less_the_answer(tiny) -> None:
    model, tokenizer = tiny
    assert context_window(model) == 256  # tests/tiny.py: max_position_embeddings=256
    limit = ContextLimit.for_model(model, tokenizer, max_new_tokens=16)
    assert limit.max_tokens == 240 and limit.overflow == "error"
    [ex] = kshot_examples(QUERIES[:1], POOL, 2, layout="inline", limit=limit)
    assert ex.meta["prompt_tokens"] == _tokens(tokenizer, ex) and ex.meta["shots_dropped"] == 0
    assert context_window(object()) is None


def test_overlong_prompts_are_refused_or_shortened_and_reported(tiny) -> None:
    _, tokenizer = tiny
    full = kshot_examples(QUERIES, POOL, 6, layout="inline", seed=1)
    lengths = [_tokens(tokenizer, ex) for ex in full]
    one_shot = _tokens(tokenizer, kshot_examples(QUERIES[:1], POOL, 1, layout="inline")[0])
    zero_shot = _tokens(tokenizer, kshot_examples(QUERIES[:1], POOL, 0, layout="inline")[0])
    per_shot = one_shot - zero_shot  # every pool question has the same length in tokens
    cap = min(lengths) - 2 * per_shot + 1  # room for 4 of the 6 shots: 2 must go (the last one nearly fits)
    with pytest.raises(DataError, match=rf"q:0: its prompt with 6 demonstration\(s\) is {lengths[0]} tokens, more "
                                        rf"than the {cap} allowed"):  # fmt: skip
        kshot_examples(QUERIES, POOL, 6, layout="inline", seed=1, limit=ContextLimit(tokenizer, cap))
    drop = ContextLimit(tokenizer, cap, overflow="drop")
    short = kshot_examples(QUERIES, POOL, 6, layout="inline", seed=1, limit=drop)
    for before, after in zip(full, short, strict=True):
        assert after.meta["shots_dropped"] == 2 and after.meta["prompt_tokens"] == _tokens(tokenizer, after) <= cap
        assert after.meta["shots"] == before.meta["shots"][2:], "the first (farthest) demonstrations go first"
        assert after.prompt_and_answer()[1] == before.prompt_and_answer()[1]
    assert context_summary(short) == {"longest_prompt": max(lengths) - 2 * per_shot, "prompts_shortened": 2,
                                      "shots_dropped": 4}  # fmt: skip
    with pytest.raises(DataError, match="The question alone is too long"):
        kshot_examples(QUERIES, POOL, 2, layout="inline", limit=ContextLimit(tokenizer, 3, overflow="drop"))
    assert context_summary(full)["longest_prompt"] is None, "unmeasured examples report nothing"


def test_cli_eval_refuses_or_drops_shots_over_the_context(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from tunelab.cli.main import main

    def write(path: Path, examples: list[Example]) -> Path:
        rows = [{"messages": [{"role": m.role, "content": m.content} for m in ex.messages]} for ex in examples]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    test, pool = write(tmp_path / "test.jsonl", QUERIES), write(tmp_path / "pool.jsonl", POOL * 4)
    args = ["eval", str(tiny_model_dir), "--data", str(test), "--max-new-tokens", "2", "--shot-layout", "inline",
            "--shots", "20", "--shot-pool", str(pool), "--out", str(tmp_path / "pred.jsonl")]  # fmt: skip
    assert main(args) == 2, "20 long demonstrations do not fit 256 positions: a user error by default"
    assert "more than the 254 allowed" in capsys.readouterr().err.replace("\n", "")
    assert main([*args, "--shot-overflow", "drop"]) == 0
    assert "demonstration(s) left out (--shot-overflow drop)" in capsys.readouterr().out.replace("\n", "")
