"""Few-shot baselines: demonstration choice (seeded random, embedding similarity), prompt layouts, and scoring
through the same generation metrics as fine-tuned models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.evaluate import generation_metrics
from tunelab.eval.fewshot.prompts import kshot_examples, select_shots

WORDS = ["cat", "dog", "sky", "mat", "one", "two"]


def _chat(question: str, answer: str, origin: str = "") -> Example:
    return Example(messages=[Message("user", question), Message("assistant", answer)], origin=origin)


POOL = [
    _chat(f"what is color of {w}", c, f"pool:{i}")
    for i, (w, c) in enumerate(zip(WORDS, ["red", "blue"] * 3, strict=True))
]


def _bag_of_words(texts: list[str]) -> torch.Tensor:
    vocab = sorted({w for t in [*texts, *(e.messages[0].content for e in POOL)] for w in t.split()})
    vecs = torch.tensor([[float(w in t.split()) for w in vocab] for t in texts])
    return torch.nn.functional.normalize(vecs, dim=-1)


def test_random_shots_are_seeded_distinct_and_never_the_question() -> None:
    queries = [_chat("what is color of cat", "red"), _chat("what is color of dog", "blue")]
    first = select_shots(queries, POOL, 3, seed=1)
    assert first == select_shots(queries, POOL, 3, seed=1) and first != select_shots(queries, POOL, 3, seed=2)
    assert all(len(set(idx)) == 3 for idx in first)
    assert 0 not in first[0] and 1 not in first[1], "the pool copy of the question is excluded"
    with pytest.raises(DataError, match="fewer than k=6"):
        select_shots(queries, POOL, 6)


def test_similar_shots_put_the_nearest_last() -> None:
    pool = [_chat("red cat", "a"), _chat("blue sky today", "b"), _chat("red cat on mat", "c"), _chat("dog", "d")]
    query = _chat("the red cat on a mat", "x")
    # Bag-of-words cosine with the query {the, red, cat, on, a, mat}: "red cat on mat" 4/sqrt(24) = 0.82,
    # "red cat" 2/sqrt(12) = 0.58, the others 0. Two shots: least similar first, nearest last.
    assert select_shots([query], pool, 2, strategy="similar", embed=_bag_of_words) == [[0, 2]]
    with pytest.raises(ValueError, match="embed"):
        select_shots([query], pool, 2, strategy="similar")


def test_turns_and_inline_layouts() -> None:
    query = Example(
        messages=[
            Message("system", "Answer with a color."),
            Message("user", "what is color of sky"),
            Message("assistant", "blue"),
        ]
    )
    [turns] = kshot_examples([query], POOL[:2], 2, seed=0, instruction="Be brief.")
    roles = [m.role for m in turns.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert turns.messages[0].content == "Be brief.\n\nAnswer with a color."
    assert turns.prompt_and_answer()[1] == "blue" and turns.messages[-2].content == "what is color of sky"
    assert sorted(turns.meta["shots"]) == ["pool:0", "pool:1"]
    [inline] = kshot_examples([query], POOL[:1], 1, layout="inline")
    assert [m.role for m in inline.messages] == ["system", "user", "assistant"]
    assert (
        inline.messages[1].content == "Input: what is color of cat\nOutput: red\n\nInput: what is color of sky\nOutput:"
    )
    [zero] = kshot_examples([query], POOL, 0)
    assert zero.messages == query.messages


def test_kshot_examples_are_scored_by_generation_metrics(tiny_model_dir: Path) -> None:
    from tunelab.models.load import load_model, load_tokenizer

    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    queries = [_chat(f"what is color of {w}", "red", f"val:{i}") for i, w in enumerate(["cat", "mat"])]
    prompts = kshot_examples(queries, POOL, 2, strategy="random")
    metrics, rows = generation_metrics(
        model, tokenizer, prompts, max_examples=None, max_new_tokens=3, batch_size=2, show_progress=False
    )
    assert {"exact_match", "token_f1", "rouge_l"} <= set(metrics) and len(rows) == 2
    assert rows[0]["prompt"] == "what is color of cat" and rows[0]["reference"] == "red"
    with pytest.raises(DataError, match="no assistant turn"):
        kshot_examples([Example(messages=[Message("user", "hi")])], POOL, 1)


def _write_rows(path: Path, pairs: list[tuple[str, str]]) -> Path:
    import json

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_eval_with_shots_scores_the_same_rows_with_demonstrations(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from tunelab.cli.main import main

    test = _write_rows(tmp_path / "test.jsonl", [("what is color of cat", "red"), ("what is color of sky", "blue")])
    pool = _write_rows(
        tmp_path / "pool.jsonl",
        [("the weather report for monday", "rain"), ("what is the color of a cat", "red"), ("list three primes", "2")],
    )
    base = ["eval", str(tiny_model_dir), "--data", str(test), "--max-new-tokens", "2", "--shot-layout", "inline"]
    out = tmp_path / "pred.jsonl"
    assert main([*base, "--out", str(out)]) == 0
    zero = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in zero] == ["what is color of cat", "what is color of sky"], "zero-shot: as is"

    assert main([*base, "--out", str(out), "--shots", "2", "--shot-pool", str(pool), "--seed", "3"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["red", "blue"], "the same held-out rows, the same references"
    assert all(r["prompt"].count("Input: ") == 3 and r["prompt"].endswith("\nOutput:") for r in rows)
    assert {"exact_match", "token_f1"} <= set(rows[0])

    # Similar shots by the embedded MiniLM: the paraphrase of the cat question is the nearest, so it comes last.
    similar = ["--shots", "1", "--shot-pool", str(pool), "--shot-selection", "similar"]
    assert main([*base, "--out", str(out), *similar]) == 0
    cat = json.loads(out.read_text().splitlines()[0])["prompt"]
    assert cat.startswith("Input: what is the color of a cat\nOutput: red\n\n"), cat

    assert main([*base, "--shots", "2"]) == 2, "no pool: a user error, exit 2"
    assert main([*base, "--shots", "4", "--shot-pool", str(pool)]) == 2, "k larger than the pool"
