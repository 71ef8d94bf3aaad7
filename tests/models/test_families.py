"""The support matrix: one test per cell kind, parametrised over the families of models/families.py.

Each family is a tiny random model built from its own transformers config class (tests/tiny_families.py), saved
once per module; a LoRA run of each is trained once and shared by the cells that read a trained run (merge, PEFT
export, GGUF, serving). A cell the family table names as one that cannot work is checked to fail as it says.
For the encoders, the LoRA cell trains a classification head (`objective=classify`) and the full cell trains
sentence embeddings (`objective=contrastive`).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM

from tests.tiny import WORDS, write_color_task
from tests.tiny_families import HIDDEN, build_family, with_family_template
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.data.load import load_examples
from tunelab.data.tokenize import IGNORE, tokenize_all
from tunelab.export.errors import ExportError
from tunelab.export.gguf import export_gguf, verify_gguf
from tunelab.export.peft import export_peft
from tunelab.methods.trained import save_merged
from tunelab.models.chat import prompt_text
from tunelab.models.families import FAMILIES, Family
from tunelab.models.kernels.fast_path import apply_fast_path_
from tunelab.models.load import load_model, load_tokenizer, resolve_source
from tunelab.recipes.run import RunResult, run_training
from tunelab.serve.embeddings import Embedder
from tunelab.serve.engine import Engine, Handle, SequenceSpec
from tunelab.serve.loading import load_served
from tunelab.serve.sampling import SamplingParams

ALL = list(FAMILIES)
DECODERS = [t for t, f in FAMILIES.items() if f.kind != "encoder"]
ENCODERS = [t for t, f in FAMILIES.items() if f.kind == "encoder"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny model folder of a family, built on first use and kept for the module."""
    built: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            built[model_type] = build_family(model_type, tmp_path_factory.mktemp(model_type))
        return built[model_type]

    return get


def _write_sentiment(path: Path, n: int) -> Path:
    rng = random.Random(0)
    with path.open("w") as fh:
        for _ in range(n):
            positive = rng.random() < 0.5
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))] + ["yes" if positive else "no"]
            fh.write(
                json.dumps({"text": " ".join(rng.sample(words, len(words))), "label": "pos" if positive else "neg"})
            )
            fh.write("\n")
    return path


def _write_pairs(path: Path, n: int) -> Path:
    rng = random.Random(0)
    with path.open("w") as fh:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(4)]
            fh.write(json.dumps({"anchor": " ".join(words), "positive": " ".join(reversed(words))}) + "\n")
    return path


def _config(tmp: Path, model_dir: Path, model_type: str, method: str):
    """A short run of the family's tiny model: the colour task for decoders, classification or embeddings else."""
    common = [f"model.source={model_dir}", f"output.dir={tmp / 'runs'}", f"output.name={model_type}-{method}",
              f"method={method}", "training.precision=fp32", "training.batch_size=6", "training.log_every=1",
              "data.val_fraction=0.25", "eval.generate=false", "eval.max_examples=6", "eval.samples=0"]  # fmt: skip
    if FAMILIES[model_type].kind != "encoder":
        data = write_color_task(tmp / "color.jsonl", 24)
        task = [f"data.train={data}", "training.epochs=1", "training.learning_rate=1e-2"]
    elif method == "lora":
        data = _write_sentiment(tmp / "sentiment.jsonl", 32)
        task = [f"data.train={data}", "objective=classify", "training.epochs=3", "training.learning_rate=3e-3"]
    else:
        data = _write_pairs(tmp / "pairs.jsonl", 24)
        task = [f"data.train={data}", "objective=contrastive", "training.epochs=2", "training.learning_rate=5e-3"]
    return load_config(None, [*common, *task, *(["method.r=4"] if method == "lora" else [])])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, folder) -> Callable[[str, str], RunResult]:
    """A run of a family's tiny model with `method` (lora or full), trained on first use and kept."""
    runs: dict[tuple[str, str], RunResult] = {}

    def get(model_type: str, method: str) -> RunResult:
        if (model_type, method) not in runs:
            tmp = tmp_path_factory.mktemp(f"{model_type}-{method}")
            runs[model_type, method] = run_training(_config(tmp, folder(model_type), model_type, method))
        return runs[model_type, method]

    return get


def _improved(result: RunResult) -> None:
    assert result.baseline is not None
    assert result.final["val_loss"] < result.baseline["val_loss"], (result.baseline, result.final)


@pytest.mark.parametrize("model_type", ALL)
def test_lora_training(model_type: str, trained) -> None:
    result = trained(model_type, "lora")
    _improved(result)
    adapters = [n for n, p in result.model.named_parameters() if p.requires_grad and "lora_" in n]
    assert adapters, "LoRA adapters were trained"
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("model_type", ALL)
def test_full_training(model_type: str, trained, folder) -> None:
    result = trained(model_type, "full")
    _improved(result)
    before = load_model(str(folder(model_type))).state_dict()
    after = result.model.state_dict()
    changed = [n for n, w in before.items() if n in after and not torch.equal(w, after[n].float())]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"


@pytest.mark.parametrize("model_type", ALL)
def test_fast_path(model_type: str, folder) -> None:
    family = FAMILIES[model_type]
    source = str(folder(model_type))
    reference, fast = load_model(source), load_model(source)
    path = apply_fast_path_(fast, "auto")
    assert path.used == family.fast_path and path.gaps == family.fast_path_gaps
    if family.fast_path_gaps:
        with pytest.raises(ConfigError, match=r"training\.fused_modules: true"):
            apply_fast_path_(load_model(source), True)
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(0))
    outputs = [_forward_backward(model, ids, family) for model in (reference, fast)]
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def _forward_backward(model: torch.nn.Module, ids: torch.Tensor, family: Family):
    out = model.eval()(input_ids=ids)  # eval: no dropout (the encoders have some), gradients all the same
    states = out.logits if family.kind != "encoder" else out.last_hidden_state
    states.float().pow(2).mean().backward()
    return states.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", ALL)
def test_chat_template(model_type: str, folder, tmp_path: Path) -> None:
    """The family's own chat template (where one ships on this machine, else ChatML): every assistant turn of a
    two-turn row carries the loss on exactly its text and end-of-turn token, and nothing else does."""
    family = FAMILIES[model_type]
    tokenizer = load_tokenizer(str(folder(model_type)))
    if family.reason("chat_template"):  # an encoder source: its rows are texts, never run through a template
        assert family.kind == "encoder" and resolve_source(str(folder(model_type))).task == "encoder"
        return
    end = with_family_template(tokenizer, model_type)
    turns = [("what is the color of sky", "blue"), ("and the dog", "red dog")]
    row = {"messages": [{"role": r, "content": c} for q, a in turns for r, c in (("user", q), ("assistant", a))]}
    (tmp_path / "two.jsonl").write_text(json.dumps(row) + "\n")
    rows = load_examples([write_color_task(tmp_path / "c.jsonl", 6), tmp_path / "two.jsonl"]).examples
    items, rejects = tokenize_all(rows, tokenizer, 512)
    assert not rejects and not any(item.truncated for item in items)
    for row, item in zip(rows, items, strict=True):
        answers = [m.content for m in row.messages if m.role == "assistant"]
        labelled = _labelled_runs(item.input_ids, item.labels)
        expected = [a + end for a in answers]
        if model_type.startswith("qwen3"):  # the last turn keeps the empty reasoning block Qwen3 renders before it
            expected[-1] = "<think>\n\n</think>\n\n" + expected[-1]
        if model_type == "phi3":  # a finished Phi-3 conversation ends with the end-of-text token
            expected[-1] += "\n" + tokenizer.eos_token
        assert [tokenizer.decode(run) for run in labelled] == expected
        prompt = prompt_text(tokenizer, row.messages[:-1])
        assert tokenizer.decode(item.input_ids).startswith(prompt)  # the text it trains on begins as inference asks


def _labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The runs of consecutive labelled tokens."""
    runs: list[list[int]] = []
    for k, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if label != IGNORE:
            if k == 0 or labels[k - 1] == IGNORE:
                runs.append([])
            runs[-1].append(token)
    return runs


def _lora_logits(run: RunResult, source: Path, ids: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    """Logits of the family's base with the run's adapter loaded by peft itself."""
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter or run.run_dir / "adapter").eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 40, 41, 42, 43, 7, 8, 9]])


@pytest.mark.parametrize("model_type", ALL)
def test_merge(model_type: str, trained, folder, tmp_path: Path) -> None:
    family = FAMILIES[model_type]
    run = trained(model_type, "lora")
    merged = save_merged(str(run.run_dir), tmp_path / "merged")
    if family.kind == "encoder":
        reloaded = AutoModel.from_pretrained(merged, dtype=torch.float32).eval()
        body = load_model(str(folder(model_type)))
        adapted = PeftModel.from_pretrained(body, run.run_dir / "adapter").eval()
        with torch.no_grad():
            want, got = adapted(input_ids=IDS).last_hidden_state, reloaded(input_ids=IDS).last_hidden_state
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        return
    reloaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        got = reloaded(input_ids=IDS).logits
    want = _lora_logits(run, folder(model_type), IDS)
    assert not torch.allclose(want, _lora_logits_base(folder(model_type))), "the adapter changes the logits"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _lora_logits_base(source: Path) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()(input_ids=IDS).logits


@pytest.mark.parametrize("model_type", ALL)
def test_peft_export(model_type: str, trained, folder, tmp_path: Path) -> None:
    run = trained(model_type, "lora")
    out = export_peft(str(run.run_dir), tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    body = load_model(str(folder(model_type)))
    exported = PeftModel.from_pretrained(body, out).eval()
    original = PeftModel.from_pretrained(load_model(str(folder(model_type))), run.run_dir / "adapter").eval()
    with torch.no_grad():
        got, want = exported(input_ids=IDS), original(input_ids=IDS)
    key = "logits" if FAMILIES[model_type].kind != "encoder" else "last_hidden_state"
    torch.testing.assert_close(got[key], want[key])


@pytest.mark.parametrize("model_type", ALL)
def test_gguf_export(model_type: str, trained, tmp_path: Path) -> None:
    family = FAMILIES[model_type]
    run = trained(model_type, "lora")
    if family.reason("gguf"):
        with pytest.raises(ExportError, match=r"model_type is|not supported"):
            export_gguf(str(run.run_dir), tmp_path / "model.gguf", "f32")
        return
    summary = verify_gguf(export_gguf(str(run.run_dir), tmp_path / "model.gguf", "f32"))
    assert summary.metadata["general.architecture"] == "llama"
    assert "blk.1.ffn_down.weight" in summary.tensors and "token_embd.weight" in summary.tensors


@pytest.mark.parametrize("model_type", ALL)
def test_serve(model_type: str, trained) -> None:
    family = FAMILIES[model_type]
    run = trained(model_type, "lora")
    served = load_served(str(run.run_dir), dtype=torch.float32)
    if family.reason("serve"):
        assert served.task == "encoder"
        vectors, tokens = Embedder(served.model, served.tokenizer).embed(["the cat sat", "a dog"])
        assert len(vectors) == 2 and len(vectors[0]) == HIDDEN and tokens > 0
        return
    model = PeftModel.from_pretrained(served.model, served.adapters[run.run_dir.resolve().name]).eval()
    text = served.tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is color of cat"}], add_generation_prompt=True, tokenize=False
    )
    prompt = served.tokenizer(str(text), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False)  # both stop at <|im_end|>
        with model.disable_adapter():
            base = model.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False)
    # The adapter's request and the base model's, together: batched (per-row adapters) or one after the other
    # where peft cannot mix adapters in a batch (LoRA on a mixture of experts' expert tensors).
    answers = [served.tokenizer.decode(w[0, len(prompt) :], skip_special_tokens=True) for w in (want, base)]
    # The base model's request first, on the model as peft loaded it (its adapter active): the engine must not
    # take that adapter for the base model's rows.
    assert asyncio.run(_generate(Engine(model, served.tokenizer).start(), prompt, [None, "default"])) == answers[::-1]
    assert asyncio.run(_generate(Engine(model, served.tokenizer).start(), prompt, ["default", None])) == answers


async def _generate(engine: Engine, prompt: list[int], adapters: list[str | None]) -> list[str]:
    try:
        loop = asyncio.get_running_loop()
        handles = [Handle(loop) for _ in adapters]
        for handle, adapter in zip(handles, adapters, strict=True):
            engine.submit(
                [SequenceSpec(0, prompt, SamplingParams(max_tokens=3, temperature=0), adapter=adapter)], handle
            )
        return [await _text(handle) for handle in handles]
    finally:
        engine.stop()


async def _text(handle: Handle) -> str:
    text = ""
    while True:
        event = await handle.events.get()
        text += event.text
        if event.finish_reason:
            return text
