"""One bad row fails only its own request: the others in the batch finish with their one-by-one answers.

Failures are made through the engine's real seams (a constraint object whose state breaks mid-generation, a
prompt with no tokens, settings the sampler cannot be built from), never by replacing engine parts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.serve.engine import Engine, EngineStoppedError, Event, Handle, QueueFullError, SequenceSpec
from tunelab.serve.sampling import SamplingParams

PROMPTS = [[5, 17, 42, 99, 3, 200], [7, 8], [100, 101, 102, 103, 104, 105, 106, 107, 108]]
SECRET = "constraint state corrupted at /srv/secret/path.py"


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir: Path):
    # Scaled weights give peaked logits, so greedy paths differ between prompts and any row mix-up shows.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


class BreaksAfter:
    """A constraint that allows every token, then fails on its `after`-th question (a grammar in a bad state)."""

    def __init__(self, vocab: int, after: int) -> None:
        self.vocab, self.after, self.asked = vocab, after, 0

    def allowed(self) -> list[int]:
        self.asked += 1
        if self.asked >= self.after:
            raise RuntimeError(SECRET)
        return list(range(self.vocab))

    def advance(self, token_id: int) -> None:
        pass

    def is_finished(self) -> bool:
        return False


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0)


def busy(n: int = 200) -> SamplingParams:
    """A row that keeps its batch slot: token 5 forced, so it never stops before `n` tokens."""
    return SamplingParams(max_tokens=n, temperature=0, logit_bias={5: 100.0})


def solo(engine: Engine, model, tokenizer, prompt: list[int], n: int) -> tuple[str, str]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    ids = out[0, len(prompt) :].tolist()
    cut = next((k for k, t in enumerate(ids) if t in engine.stops), None)
    text = tokenizer.decode(ids[:cut] if cut is not None else ids, skip_special_tokens=True)
    return text, "stop" if cut is not None else "length"


async def collect(handle: Handle, timeout: float = 30) -> tuple[str, Event]:
    text = ""
    while True:
        event = await asyncio.wait_for(handle.events.get(), timeout)
        text += event.text
        if event.finish_reason:
            return text, event


def wait_idle(engine: Engine, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while (engine.active_count or engine.queue_depth) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_row_that_fails_in_sampling_fails_only_its_request(sharp_model, caplog) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=4).start()

    async def scenario() -> list[tuple[str, Event]]:
        loop = asyncio.get_running_loop()
        handles = [Handle(loop) for _ in PROMPTS]
        bad = SequenceSpec(0, PROMPTS[1], greedy(12), constraint=BreaksAfter(len(tokenizer), after=4))
        specs = [SequenceSpec(0, PROMPTS[0], greedy(12)), bad, SequenceSpec(0, PROMPTS[2], greedy(12))]
        for spec, handle in zip(specs, handles, strict=True):
            engine.submit([spec], handle)  # submitted together: prefilled and decoded in one batch
        return await asyncio.gather(*(collect(h) for h in handles))

    try:
        with caplog.at_level(logging.ERROR, logger="tunelab.serve.engine"):
            results = asyncio.run(scenario())
        wait_idle(engine)
        assert engine.active_count == 0 and engine.alive
    finally:
        engine.stop()
    for prompt, (text, event) in zip((PROMPTS[0], PROMPTS[2]), (results[0], results[2]), strict=True):
        assert (text, event.finish_reason) == solo(engine, model, tokenizer, prompt, 12)
        assert event.error is None
    _, failed = results[1]
    assert failed.finish_reason == "error" and failed.completion_tokens == 3
    # The client sees an id; the exception's text stays in the server log, under the same id.
    assert failed.error is not None and SECRET not in failed.error and "error id err-" in failed.error
    ident = failed.error.split("error id ")[1].split(")")[0]
    logged = [r for r in caplog.records if ident in r.getMessage()]
    assert logged and logged[0].exc_info and SECRET in str(logged[0].exc_info[1])


def test_a_prompt_whose_prefill_fails_does_not_fail_the_rows_in_flight(sharp_model) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=4).start()

    async def scenario() -> tuple[list[tuple[str, Event]], tuple[str, Event]]:
        loop = asyncio.get_running_loop()
        handles = [Handle(loop), Handle(loop)]
        engine.submit([SequenceSpec(0, PROMPTS[0], greedy(30))], handles[0])
        engine.submit([SequenceSpec(0, PROMPTS[2], greedy(30))], handles[1])
        first = [await h.events.get() for h in handles]  # both rows are decoding now
        empty = Handle(loop)
        engine.submit([SequenceSpec(0, [], greedy(5))], empty)  # no tokens: the model cannot prefill it alone
        done = await asyncio.gather(collect(handles[0]), collect(handles[1]), collect(empty))
        return [(first[0].text + done[0][0], done[0][1]), (first[1].text + done[1][0], done[1][1])], done[2]

    try:
        (a, b), empty = asyncio.run(scenario())
        wait_idle(engine)
    finally:
        engine.stop()
    assert (a[0], a[1].finish_reason) == solo(engine, model, tokenizer, PROMPTS[0], 30)
    assert (b[0], b[1].finish_reason) == solo(engine, model, tokenizer, PROMPTS[2], 30)
    assert empty[1].finish_reason == "error" and "error id" in (empty[1].error or "")


def test_bad_prompts_admitted_together_with_good_ones_fail_alone(sharp_model) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=4).start()
    # A token id past the embedding table: the shared prefill raises, then each prompt is prefilled alone.
    out_of_range = [5, model.config.vocab_size + 10]

    async def scenario() -> list[tuple[str, Event]]:
        loop = asyncio.get_running_loop()
        specs = [PROMPTS[0], out_of_range, PROMPTS[2]]
        handles = [Handle(loop) for _ in specs]
        with engine._wake:  # hold the worker back so that all three are admitted in one prefill
            for prompt, handle in zip(specs, handles, strict=True):
                engine.submit([SequenceSpec(0, prompt, greedy(8))], handle)
        return await asyncio.gather(*(collect(h) for h in handles))

    try:
        results = asyncio.run(scenario())
        wait_idle(engine)
    finally:
        engine.stop()
    assert (results[0][0], results[0][1].finish_reason) == solo(engine, model, tokenizer, PROMPTS[0], 8)
    assert (results[2][0], results[2][1].finish_reason) == solo(engine, model, tokenizer, PROMPTS[2], 8)
    assert results[1][1].finish_reason == "error"


def test_a_request_whose_sampler_cannot_be_built_leaves_nothing_queued(sharp_model) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=1, max_queue=4).start()
    try:
        loop = asyncio.new_event_loop()
        good = SequenceSpec(0, PROMPTS[0], busy())
        bad = SequenceSpec(1, PROMPTS[1], SamplingParams(logit_bias={"x": 1.0}))  # type: ignore[dict-item]
        with engine._wake, pytest.raises((TypeError, ValueError, RuntimeError)):
            engine.submit([good, bad], Handle(loop))
        # The good choice of the failed request was not queued: nothing decodes for nobody.
        assert engine.queue_depth == 0 and len(engine._waiting) == 0
        time.sleep(0.05)
        assert engine.active_count == 0
        loop.close()
    finally:
        engine.stop()


def test_cancelled_waiting_entries_do_not_count_against_the_queue(sharp_model) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=1, max_queue=2).start()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hog = Handle(loop)
        engine.submit([SequenceSpec(0, PROMPTS[0], busy())], hog)
        await hog.events.get()  # the one batch slot is taken: what comes next waits
        gone = [Handle(loop), Handle(loop)]
        for handle in gone:
            engine.submit([SequenceSpec(0, PROMPTS[1], greedy(4))], handle)
        assert engine.queue_depth == 2
        with pytest.raises(QueueFullError):
            engine.submit([SequenceSpec(0, PROMPTS[1], greedy(4))], Handle(loop))
        for handle in gone:
            handle.cancel()  # their clients left while waiting
        assert engine.queue_depth == 0
        fresh = [Handle(loop), Handle(loop)]
        for handle in fresh:
            engine.submit([SequenceSpec(0, PROMPTS[1], greedy(4))], handle)  # room again: no 429
        hog.cancel()
        results = await asyncio.gather(*(collect(h) for h in fresh))
        assert [e.finish_reason for _, e in results] == ["length", "length"]

    try:
        asyncio.run(scenario())
        wait_idle(engine)
        assert engine.active_count == 0 and engine.queue_depth == 0
    finally:
        engine.stop()


def test_a_stopped_engine_answers_waiting_requests_and_refuses_new_ones(sharp_model) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=1).start()

    async def scenario() -> Event:
        loop = asyncio.get_running_loop()
        hog, waiting = Handle(loop), Handle(loop)
        engine.submit([SequenceSpec(0, PROMPTS[0], busy())], hog)
        engine.submit([SequenceSpec(0, PROMPTS[1], greedy(4))], waiting)
        await hog.events.get()
        await asyncio.to_thread(engine.stop)
        _, event = await collect(waiting, timeout=5)  # told at once, not left to its deadline
        with pytest.raises(EngineStoppedError):
            engine.submit([SequenceSpec(0, PROMPTS[1], greedy(4))], Handle(loop))
        return event

    event = asyncio.run(scenario())
    assert event.finish_reason == "error" and event.error_status == 503 and not engine.alive


def test_prefill_keeps_only_the_last_logits_and_they_equal_the_full_forward(sharp_model) -> None:
    from peft import LoraConfig, get_peft_model

    from tunelab.serve.batch import keeps_last_logits, prefill

    model, _ = sharp_model
    wrapped = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model.name_or_path).eval(), LoraConfig(r=2, target_modules=["q_proj"])
    )
    assert keeps_last_logits(model) and keeps_last_logits(wrapped)
    with torch.inference_mode():
        logits = prefill(model, PROMPTS, 0, {})[0]
        for row, prompt in enumerate(PROMPTS):
            full = model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
            assert torch.allclose(logits[row], full, atol=1e-4), row
