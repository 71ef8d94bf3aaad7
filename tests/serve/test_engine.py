"""The batching engine: batched answers equal one-by-one answers, also across adapters; sampling pieces by hand."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.serve.engine import Engine, Handle, SequenceSpec, _find_stop, _held_back
from tunelab.serve.metrics import ServerMetrics
from tunelab.serve.sampling import Sampler, SamplingParams

PROMPTS = [[5, 17, 42, 99, 3, 200], [7, 8], [100, 101, 102, 103, 104, 105, 106, 107, 108], [50, 60, 70]]


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir: Path):
    # Scaled weights give peaked logits, so greedy paths differ between prompts and any row mix-up shows.
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def solo(model, prompt: list[int], n: int, **kwargs) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, **kwargs)
    return out[0, len(prompt) :].tolist()


async def _run(engine: Engine, specs: list[SequenceSpec], delays: list[float]) -> list[tuple[str, str]]:
    async def one(spec: SequenceSpec, delay: float) -> tuple[str, str]:
        await asyncio.sleep(delay)
        handle = Handle(asyncio.get_running_loop())
        engine.submit([spec], handle)
        text = ""
        while True:
            event = await handle.events.get()
            text += event.text
            if event.finish_reason:
                return text, event.finish_reason

    return await asyncio.gather(*(one(s, d) for s, d in zip(specs, delays, strict=True)))


def test_rows_joining_and_leaving_give_the_one_by_one_answers(sharp_model) -> None:
    model, tokenizer = sharp_model
    metrics = ServerMetrics()
    engine = Engine(model, tokenizer, max_batch_size=3, metrics=metrics).start()
    lengths = [12, 5, 20, 9]
    try:
        greedy = [SamplingParams(max_tokens=n, temperature=0) for n in lengths]
        specs = [SequenceSpec(0, p, g) for p, g in zip(PROMPTS, greedy, strict=True)]
        # Staggered arrivals and a batch limit of 3: rows join mid-flight and wait for free slots.
        results = asyncio.run(_run(engine, specs, [0, 0.01, 0.02, 0.0]))
    finally:
        engine.stop()
    stops = engine.stops
    for prompt, n, (text, reason) in zip(PROMPTS, lengths, results, strict=True):
        ids = solo(model, prompt, n, pad_token_id=0)
        cut = next((k for k, t in enumerate(ids) if t in stops), None)
        want = tokenizer.decode(ids[:cut] if cut is not None else ids, skip_special_tokens=True)
        assert text == want and reason == ("stop" if cut is not None else "length")
    sizes = metrics.batch_size.collect()[0].samples
    assert any(s.name.endswith("_sum") and s.value > sum(lengths) / 3 for s in sizes)  # steps did run batched


def test_one_batch_serves_several_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        targets = ["q_proj", "v_proj", "down_proj"]
        config = LoraConfig(r=4, lora_alpha=64, target_modules=targets, init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(tmp_path / name)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "a", "a")
    model.load_adapter(str(tmp_path / "b"), adapter_name="b")
    model.eval()
    engine = Engine(model, tokenizer, max_batch_size=8).start()
    adapters = [None, "a", "b", "a", None, "b"]
    try:
        specs = [
            SequenceSpec(0, PROMPTS[i % 4], SamplingParams(max_tokens=8, temperature=0), adapter=a)
            for i, a in enumerate(adapters)
        ]
        results = asyncio.run(_run(engine, specs, [0.0] * len(specs)))
    finally:
        engine.stop()
    for i, (adapter, (text, _)) in enumerate(zip(adapters, results, strict=True)):
        if adapter is None:
            with model.disable_adapter():
                ids = solo(model, PROMPTS[i % 4], 8, pad_token_id=0)
        else:
            model.set_adapter(adapter)
            ids = solo(model, PROMPTS[i % 4], 8, pad_token_id=0)
        cut = next((k for k, t in enumerate(ids) if t in engine.stops), len(ids))
        assert text == tokenizer.decode(ids[:cut], skip_special_tokens=True), (i, adapter)


def test_cancelled_rows_leave_and_the_engine_goes_on(sharp_model) -> None:
    model, tokenizer = sharp_model
    engine = Engine(model, tokenizer, max_batch_size=4).start()

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        gone = Handle(loop)
        engine.submit([SequenceSpec(0, PROMPTS[0], SamplingParams(max_tokens=200, temperature=0))], gone)
        await gone.events.get()
        gone.cancel()
        _, reason = (await _run(engine, [SequenceSpec(0, PROMPTS[1], SamplingParams(max_tokens=4))], [0]))[0]
        return reason

    try:
        assert asyncio.run(scenario()) == "length"
        deadline = time.monotonic() + 5  # the last event is sent just before its row leaves the batch
        while engine._active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine._active == [] and engine.queue_depth == 0
    finally:
        engine.stop()


def test_stop_strings_are_found_and_held_back() -> None:
    assert _find_stop("hello world", ["wor"], 0) == 6
    assert _find_stop("hello world", ["x", "lo"], 0) == 3
    assert _find_stop("abcabc", ["abc"], 4) == 3  # a stop may start before what was already sent
    assert _held_back("the end is ne", ["near"]) == 2  # "ne" might become "near": do not send it yet
    assert _held_back("the end", ["near"]) == 0


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two only.
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=0))
    picks = {sampler.pick(logits, []) for _ in range(200)}
    assert picks == {0, 1}


def test_logit_bias_and_banned_sequences() -> None:
    logits = torch.tensor([0.0, 5.0, 1.0, 0.0])
    assert Sampler(SamplingParams(temperature=0, logit_bias={3: 10.0})).pick(logits, []) == 3
    banned = Sampler(SamplingParams(temperature=0, banned=[[2, 1], [1]]))
    assert banned.pick(logits, [2]) == 2  # token 1 is banned outright; [2, 1] bans it after a 2 as well
    only_pair = Sampler(SamplingParams(temperature=0, banned=[[2, 1]]))
    assert only_pair.pick(logits, [0]) == 1 and only_pair.pick(logits, [2]) == 2


def test_same_seed_same_sample_different_seed_differs() -> None:
    logits = torch.zeros(50)
    draw = [Sampler(SamplingParams(temperature=1.0, seed=s)).pick(logits, []) for s in (1, 1, 2, 3, 4)]
    assert draw[0] == draw[1] and len(set(draw[1:])) > 1
