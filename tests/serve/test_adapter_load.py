"""A failed adapter load leaves the base model exactly as it was: same logits, same modules, same answers.

A live server on loopback whose base starts bare (no adapter yet: the first load wraps it in a PeftModel), with
adapters in its folder that do not fit: one saved for a wider model (caught before peft runs) and one whose
config's rank disagrees with its tensors (it passes the shape check, so peft itself raises after injecting).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx2 as httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from tests.tiny import build_tiny_llama
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import ServeError, build_state, serve_in_thread

PROMPT = "the cat sat on"


def save_adapter(base_dir: Path, out: Path, seed: int, r: int = 4) -> Path:
    """A random LoRA adapter (B != 0, so it changes outputs) for the model in `base_dir`, in PEFT format."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def folders(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("adapters")
    adapters = tmp / "adapters"
    save_adapter(build_tiny_llama(tmp / "wider", hidden=64), adapters / "wide", seed=1)
    rank = save_adapter(tiny_model_dir, adapters / "rank", seed=2, r=8)
    config = json.loads((rank / "adapter_config.json").read_text())
    (rank / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))  # tensors say 8
    save_adapter(tiny_model_dir, adapters / "good", seed=3)
    pissa = shutil.copytree(adapters / "good", adapters / "pissa")
    config = json.loads((pissa / "adapter_config.json").read_text())
    (pissa / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    return adapters


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, folders: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    state = build_state(str(tiny_model_dir), ServeConfig(), dtype=torch.float32, name="tiny", adapter_dir=folders)
    running = serve_in_thread(state)
    yield running
    running.stop()
    torch.set_num_threads(threads)


def base_logits(server) -> torch.Tensor:
    """The base model's logits on PROMPT, computed on the engine thread (which owns the model)."""
    engine = server.state.engine
    ids = torch.tensor([engine.tokenizer(PROMPT)["input_ids"]])

    def forward() -> torch.Tensor:
        # A peft-wrapped base answers as the base only when told so (otherwise its active adapter applies).
        extra = {"adapter_names": ["__base__"]} if hasattr(engine.model, "peft_config") else {}
        return engine.model(input_ids=ids, **extra).logits.detach().clone()

    return engine.call(forward).result(timeout=60)


def greedy(server, model: str) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)


def lora_layers(server) -> int:
    return sum(isinstance(m, LoraLayer) for m in server.state.engine.model.modules())


def test_failed_loads_leave_the_base_model_unchanged(server) -> None:
    logits, answer = base_logits(server), greedy(server, "tiny").json()["choices"][0]["text"]
    model = server.state.engine.model
    modules = [type(m) for m in model.modules()]

    wide = greedy(server, "wide")  # refused before peft touches the model
    assert wide.status_code == 400, wide.text
    error = wide.json()["error"]
    assert error["code"] == "adapter_load_failed" and error["param"] == "model"
    message = error["message"]
    # The first tensor in the file: layer 0's down_proj, 128 inputs wide there (2 x 64), 96 here (2 x 48).
    assert "'wide'" in message and "layers.0.mlp.down_proj.lora_A.weight has shape [4, 128]" in message
    assert "has 96 inputs" in message and "[4, 96]" in message

    rank = greedy(server, "rank")  # passes the shape check; peft injects, then raises on the rank
    assert rank.status_code == 400 and rank.json()["error"]["code"] == "adapter_load_failed", rank.text
    assert "'rank'" in rank.json()["error"]["message"]

    assert server.state.engine.model is model and not hasattr(model, "peft_config")
    assert [type(m) for m in model.modules()] == modules and lora_layers(server) == 0
    assert torch.equal(base_logits(server), logits)
    assert greedy(server, "tiny").json()["choices"][0]["text"] == answer

    # A fitting adapter still loads afterwards (the base becomes a PeftModel), and changes only its own answers.
    good = greedy(server, "good")
    assert good.status_code == 200 and good.json()["choices"][0]["text"] != answer
    assert torch.equal(base_logits(server), logits)

    # The same failures on the peft-wrapped base: its layers and the loaded adapter are as they were.
    layers, good_answer = lora_layers(server), good.json()["choices"][0]["text"]
    wrapped_modules = [type(m) for m in server.state.engine.model.modules()]
    for name in ("wide", "rank", "pissa"):
        assert greedy(server, name).status_code == 400
    assert lora_layers(server) == layers and [type(m) for m in server.state.engine.model.modules()] == wrapped_modules
    assert set(server.state.engine.model.peft_config) == {"good"}
    assert torch.equal(base_logits(server), logits)
    assert greedy(server, "tiny").json()["choices"][0]["text"] == answer
    assert greedy(server, "good").json()["choices"][0]["text"] == good_answer


def test_an_adapter_that_rewrites_base_weights_is_refused(server) -> None:
    error = greedy(server, "pissa").json()["error"]
    assert error["code"] == "adapter_load_failed" and "init_lora_weights='pissa'" in error["message"]


def test_a_misfit_adapter_given_at_start_is_a_clear_error(tiny_model_dir: Path, folders: Path) -> None:
    with pytest.raises(ServeError, match=r"Cannot serve adapter 'wide'.*lora_A\.weight has shape \[4, 128\]"):
        build_state(str(tiny_model_dir), dtype=torch.float32, adapters={"wide": folders / "wide"})
