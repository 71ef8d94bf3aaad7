"""The production loop end to end on a tiny model: serve a briefly trained LoRA run over real HTTP with a SQLite
log, users ask about words it never saw and correct its rambling answers to the short one, `retrain` trains a
challenger from the served adapter, the gate promotes it, and the running server swaps it in on
POST /v1/admin/reload."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2 as httpx
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_config
from tunelab.recipes.monitor.store import count_requests, open_database
from tunelab.recipes.retrain.run import RetrainOptions, earlier_gate, retrain
from tunelab.recipes.run import run_training
from tunelab.recipes.runs import run_config
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, serve_in_thread
from tunelab.serve.traffic import LogSettings

KEY = "sk-retrain"
AUTH = {"Authorization": f"Bearer {KEY}"}
NOUNS = [f"w{i}" for i in range(24)]


def ask(url: str, model: str, text: str, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 3, "temperature": 0}
    reply = httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def feedback(url: str, **body) -> None:
    reply = httpx.post(f"{url}/v1/feedback", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 200, reply.text


def wait_logged(db: Path, n: int) -> None:
    engine = open_database(db)
    deadline = time.monotonic() + 20
    while count_requests(engine) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.dispose()


def test_serve_feedback_retrain_promote_reload(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, "method.name=lora", "method.r=4", "training.max_steps=10",
                      "training.learning_rate=3e-2",
                      "eval.generate=false", "eval.baseline=false", name="shop")  # fmt: skip
    champion_run = run_training(cfg).run_dir
    pointer, db = tmp_path / "runs" / "shop-champion.json", tmp_path / "log.db"
    state = build_state(str(champion_run), ServeConfig(api_keys=[KEY]), dtype=torch.float32,
                        log=LogSettings(db=str(db)), champion=pointer)  # fmt: skip
    server = serve_in_thread(state)
    try:
        url = server.url
        refused = httpx.post(f"{url}/v1/admin/reload", headers=AUTH, timeout=30)
        assert refused.status_code == 409 and "no challenger has been promoted" in refused.text
        for noun in NOUNS:  # words the champion never saw; it rambles on, users correct it to the short answer
            reply = ask(url, "shop", f"what is color of {noun}")
            feedback(url, response_id=reply["id"], rating="down", correction="red")
        for word in ("cat", "dog"):  # normal traffic: one thumbs-down left for review, one choice
            reply = ask(url, "shop", f"what is color of {word}", n=2, temperature=1.0, seed=3)
            feedback(url, response_id=reply["id"], rating="down")
        wait_logged(db, len(NOUNS) + 2)
        out = tmp_path / "runs" / "shop-retrain-1"
        options = RetrainOptions(db=str(db), out=out, pairs="off", overrides=["training.max_steps=40"])
        result = retrain(champion_run, options)
        new, old = result.gate.parts["new"], result.gate.parts["old"]
        assert new.n == 7 and new.champion == 0.0 and new.challenger == 1.0, result.gate.reason
        assert old.n == 8 and result.gate.promoted, result.gate.reason
        lineage = json.loads((result.challenger / "lineage.json").read_text())
        rows = lineage["rows"]
        assert lineage["parent"] == str(champion_run.resolve()) and rows["sft_rows"] == 17
        assert rows["review_queue"] == 2 and rows["replay"] == 17 and rows["gate_old"] == 8
        assert json.loads(pointer.read_text())["run"] == str(result.challenger.resolve())
        # A round after this one gates on everything this challenger passed: its new cases first, then the old.
        next_old = earlier_gate(result.challenger)
        assert next_old is not None and len(next_old) == 7 + 8
        gate_new = [json.loads(x) for x in (out / "data" / "gate_new.jsonl").read_text().splitlines()]
        assert [e.messages[0].content for e in next_old[:7]] == [r["messages"][0]["content"] for r in gate_new]
        assert earlier_gate(champion_run) is None  # a run no retrain produced: its validation split
        # The challenger started from the champion's adapter, not from zero.
        assert run_config(result.challenger).method.start_from == str((champion_run / "adapter").resolve())
        held_out = json.loads((out / "data" / "gate_new.jsonl").read_text().splitlines()[0])
        prompt = held_out["messages"][0]["content"]
        assert ask(url, "shop", prompt)["choices"][0]["message"]["content"] != "red"
        reloaded = httpx.post(f"{url}/v1/admin/reload", headers=AUTH, timeout=60)
        assert reloaded.status_code == 200 and reloaded.json()["run"] == str(result.challenger.resolve())
        assert ask(url, "shop", prompt)["choices"][0]["message"]["content"] == "red"
        assert httpx.post(f"{url}/v1/admin/reload", timeout=30).status_code == 401
    finally:
        server.stop()
    trained = load_file(str(result.challenger / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())
