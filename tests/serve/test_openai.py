"""The official `openai` client against a live tunelab server (uvicorn in a thread on 127.0.0.1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.tiny import build_tiny_llama
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, serve_in_thread

CHAT = [{"role": "user", "content": "what is color of cat"}]


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter in PEFT format, saved as safetensors: no training needed."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    # One thread for torch: the machine is shared, and oversubscribed threads make every step slow.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("serve")
    make_adapter(tiny_model_dir, tmp / "adapters" / "blue", seed=1)
    make_adapter(tiny_model_dir, tmp / "adapters" / "green", seed=2)
    make_adapter(tiny_model_dir, tmp / "outside", seed=3)
    make_adapter(build_tiny_llama(tmp / "wider", hidden=64), tmp / "adapters" / "mismatch", seed=5)
    state = build_state(
        str(tiny_model_dir), ServeConfig(max_batch_size=8), dtype=torch.float32, name="tiny",
        adapters={"red": make_adapter(tiny_model_dir, tmp / "red", seed=4)}, adapter_dir=tmp / "adapters",
        embedding_model="minilm-l6",
    )  # fmt: skip
    running = serve_in_thread(state)
    yield running
    running.stop()
    torch.set_num_threads(threads)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_lists_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    # base, loaded adapter, folder adapters (sorted), encoder
    assert ids == ["tiny", "red", "blue", "green", "mismatch", "minilm-l6"]
    assert "outside" not in ids


def test_chat_completion_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
    assert reply.usage.prompt_tokens > 5 and 1 <= reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_greedy_is_deterministic_and_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def ask(**kw) -> str:
        return (
            client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, **kw).choices[0].message.content
        )

    assert ask(temperature=0) == ask(temperature=0)
    assert ask(temperature=1.0, seed=7) == ask(temperature=1.0, seed=7)
    assert len({ask(temperature=1.5, seed=s) for s in range(4)}) > 1


def test_streaming_matches_the_plain_answer(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_completions_with_n_stop_and_several_prompts(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt=["the cat", "a dog"], max_tokens=6, n=2, seed=3)
    assert reply.object == "text_completion" and sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    greedy = client.completions.create(model="tiny", prompt="the cat sat", max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    stop = text.strip()[:2] if len(text.strip()) >= 2 else None
    if stop:  # stop at something the model is known to write: the answer ends just before it
        cut = client.completions.create(model="tiny", prompt="the cat sat", max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.index(stop)]
    streamed = client.completions.create(model="tiny", prompt="the cat sat", max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_json_schema_response_parses_and_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["color", "ok"],
        "additionalProperties": False,
    }
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=40, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        )  # fmt: skip
        data = json.loads(reply.choices[0].message.content)
        assert set(data) == {"color", "ok"} and data["color"] in ("red", "blue") and isinstance(data["ok"], bool)
        assert reply.choices[0].finish_reason == "stop"


def test_regex_and_banned_words(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=12,
        temperature=1.0,
        seed=1,
        extra_body={"regex": "(yes|no)( [0-9]{1,3})?"},
    )
    assert re.fullmatch(r"(yes|no)( [0-9]{1,3})?", reply.choices[0].message.content)
    free = client.completions.create(model="tiny", prompt="the cat sat on", max_tokens=12, temperature=0)
    first_word = free.choices[0].text.split()[0] if free.choices[0].text.split() else None
    if first_word and first_word.isalpha():
        banned = client.completions.create(
            model="tiny",
            prompt="the cat sat on",
            max_tokens=12,
            temperature=0,
            extra_body={"banned_words": [first_word]},
        )
        assert first_word not in banned.choices[0].text.split()


def test_logit_bias_forces_a_token(client: openai.OpenAI, server) -> None:
    tokenizer = server.state.engine.tokenizer
    token = tokenizer.convert_tokens_to_ids("yes")
    reply = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=3, temperature=0, logit_bias={str(token): 100}
    )
    assert reply.choices[0].text == "yes" * 3


def test_request_model_picks_the_adapter(client: openai.OpenAI) -> None:
    def logits_answer(model: str) -> str:
        reply = client.completions.create(model=model, prompt="the cat sat", max_tokens=10, temperature=0)
        return reply.choices[0].text

    answers = {m: logits_answer(m) for m in ("tiny", "red", "blue")}  # "blue" loads from the folder on first use
    assert len(set(answers.values())) == 3
    assert logits_answer("blue") == answers["blue"]  # loaded once, same answer after


def test_adapter_names_cannot_escape_the_folder(client: openai.OpenAI) -> None:
    for name in ("../outside", "..", "blue/../../outside", "/etc/passwd", "outside"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model=name, prompt="x", max_tokens=1)
        assert caught.value.body["code"] == "model_not_found"


def test_adapter_for_another_base_is_a_clear_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="mismatch", prompt="x", max_tokens=1)
    assert caught.value.body["code"] == "adapter_load_failed"
    assert client.completions.create(model="blue", prompt="x", max_tokens=1).choices  # others still work


def test_embeddings(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="minilm-l6", input=["a cat sat on the mat", "a kitten sat on a rug", "tax"])
    vectors = [torch.tensor(d.embedding) for d in reply.data]
    assert all(v.shape == (384,) for v in vectors) and reply.usage.prompt_tokens > 0
    torch.testing.assert_close(vectors[0].norm(), torch.tensor(1.0), atol=1e-4, rtol=0)
    close, far = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert close > far + 0.2  # a real sentence encoder: paraphrases are nearer than unrelated text
    floats = client.embeddings.create(model="minilm-l6", input="a cat sat on the mat", encoding_format="float")
    torch.testing.assert_close(torch.tensor(floats.data[0].embedding), vectors[0], atol=1e-5, rtol=0)


def test_health_and_metrics(server, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and "tiny" in health["models"]
    text = httpx.get(f"{server.url}/metrics").text
    assert 'tunelab_requests_total{route="/v1/chat/completions",status="200"}' in text
    for name in ("tunelab_request_latency_seconds_bucket", "tunelab_tokens_generated_total", "tunelab_queue_depth"):
        assert name in text
