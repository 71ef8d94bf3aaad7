"""/v1/embeddings with token ids: ids outside the vocabulary, or not integers at all, are 400s naming the id.

A live encoder-only server (the embedded all-MiniLM-L6-v2, 30522 tokens) on loopback.
"""

from __future__ import annotations

import httpx2 as httpx
import pytest
import torch

from tunelab.serve.server import build_state, serve_in_thread

VOCAB = 30522
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    running = serve_in_thread(build_state("minilm-l6", dtype=torch.float32))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def _embed(server, value: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json={"model": "minilm-l6", "input": value}, timeout=60)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ([CLS, -1, SEP], ["input[1]", "-1", f"{VOCAB} tokens"]),
        ([CLS, VOCAB, SEP], ["input[1]", str(VOCAB), f"{VOCAB} tokens", f"0 to {VOCAB - 1}"]),
        ([[CLS, SEP], [CLS, 2**70, SEP]], ["input[1][1]", str(2**70), f"{VOCAB} tokens"]),
        ([CLS, True, SEP], ["input[1]", "true", "not a token id"]),
        ([[CLS, SEP], [CLS, 2.0]], ["input[1][1]", "2.0", "not a token id"]),
        ([CLS, "7"], ["input[1]", '"7"', "not a token id"]),
        ([[CLS, SEP], []], ["input[1]", "empty"]),
    ],
)
def test_bad_token_ids_are_400s_naming_the_first_bad_id(server, value: object, named: list[str]) -> None:
    response = _embed(server, value)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input"
    for part in named:
        assert part in error["message"], error["message"]
    assert _embed(server, [CLS, SEP]).status_code == 200  # and the server is fine


def test_valid_token_ids_embed_like_the_text_they_spell(server) -> None:
    tokenizer = server.state.embedder.tokenizer
    ids = tokenizer("a cat sat on the mat")["input_ids"]
    assert max(ids) < VOCAB and len(tokenizer) == VOCAB
    by_ids, by_text = _embed(server, ids), _embed(server, "a cat sat on the mat")
    assert by_ids.status_code == by_text.status_code == 200
    both = [torch.tensor(r.json()["data"][0]["embedding"]) for r in (by_ids, by_text)]
    torch.testing.assert_close(both[0], both[1], atol=1e-5, rtol=0)
    edge = _embed(server, [[0, VOCAB - 1], ids])  # the first and the last id of the vocabulary are ids too
    assert edge.status_code == 200 and len(edge.json()["data"]) == 2
