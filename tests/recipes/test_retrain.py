"""Retraining from the traffic log: the next dataset from a seeded log, the gate's decisions, bad input."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import torch

from tunelab.cli.main import main
from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.recipes.monitor.store import (
    Feedback,
    LogContents,
    LoggedRequest,
    Preference,
    create_tables,
    open_database,
    write_feedback,
    write_preferences,
    write_requests,
)
from tunelab.recipes.retrain.dataset import build_next_data
from tunelab.recipes.retrain.gate import GateCase, GateRule, judge
from tunelab.recipes.retrain.run import RetrainOptions, retrain


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def request(i: int, text: str, kind: str = "chat") -> LoggedRequest:
    messages = chat(text) if kind == "chat" else [text]
    return LoggedRequest(f"r{i}", 100.0 + i, "m", kind, text, messages, [f"answer {i}"], ["stop"], 3, 2, 0.1)


def seeded_log() -> LogContents:
    """12 requests: 8 corrected (one corrected twice), 2 thumbs-down alone, 1 thumbs-up, a choice between two
    answers, and a corrected text completion."""
    requests = [request(i, f"question {i}") for i in range(11)] + [request(11, "complete this", "completion")]
    feedback = [Feedback(f"r{i}", 200.0 + i, "m", chat(f"question {i}"), f"answer {i}", -1, f"fixed {i}")
                for i in range(8)]  # fmt: skip
    feedback += [
        Feedback("r3", 300.0, "m", chat("question 3"), "answer 3", None, "fixed 3 again"),
        Feedback("r8", 301.0, "m", chat("question 8"), "answer 8", -1),
        Feedback("r9", 302.0, "m", chat("question 9"), "answer 9", -1),
        Feedback("r10", 303.0, "m", chat("question 10"), "answer 10", 1),
        Feedback("r11", 304.0, "m", ["complete this"], "answer 11", None, "done"),
    ]
    preferences = [Preference(305.0, "feedback", chat("question 10"), "good", "bad", "m", "m", "r10")]
    return LogContents(requests, feedback, preferences)


def test_next_dataset_from_a_seeded_log() -> None:
    data = build_next_data(seeded_log(), gate_fraction=0.25, seed=0)
    c = data.counts
    assert c["corrections"] == 8 and c["corrections_superseded"] == 1
    assert (c["thumbs_down"], c["thumbs_up"], c["pairs"], c["review_queue"]) == (10, 1, 1, 3)
    assert len(data.gate_new) == 2 and len(data.sft) == 6 and data.trainable == 7
    rows = data.sft + data.gate_new
    by_id = {r["response_id"]: r["messages"] for r in rows}
    assert by_id["r3"] == [*chat("question 3"), {"role": "assistant", "content": "fixed 3 again"}]
    assert {r["response_id"] for r in rows} == {f"r{i}" for i in range(8)}
    assert not {r["response_id"] for r in data.sft} & {r["response_id"] for r in data.gate_new}
    assert data.pairs == [{"prompt": chat("question 10"), "chosen": "good", "rejected": "bad", "source": "feedback",
                           "response_id": "r10"}]  # fmt: skip
    reasons = sorted(r["reason"] for r in data.review)
    assert reasons[0].startswith("a correction of a text completion") and reasons[1:] == ["thumbs-down without a "
                                                                                         "correction"] * 2  # fmt: skip
    whole = build_next_data(seeded_log(), hold_out=False)
    assert len(whole.sft) == 8 and not whole.gate_new


def cases(new: int, old: int) -> list[GateCase]:
    prompt = [Message("user", "q")]
    return [GateCase(prompt, "yes", "new")] * new + [GateCase(prompt, "yes", "old")] * old


def test_gate_promotes_a_better_model_and_refuses_a_worse_one() -> None:
    gate_set, rule = cases(20, 100), GateRule()
    champion = ["no"] * 20 + ["yes"] * 100
    better = ["yes"] * 15 + ["no"] * 5 + ["yes"] * 100
    result = judge(gate_set, champion, better, rule)
    assert result.promoted and result.parts["new"].challenger == 0.75 and result.parts["new"].test["p_value"] < 0.001
    # Better on the new cases but 10 old answers lost: the old part's lower bound is far below -2 points.
    forgetful = better[:20] + ["no"] * 10 + ["yes"] * 90
    refused = judge(gate_set, champion, forgetful, rule)
    assert not refused.promoted and refused.parts["new"].passed and not refused.parts["old"].passed
    assert "old cases regressed" in refused.reason
    # Worse everywhere, and merely equal: both refused on the new cases.
    worse = judge(gate_set, better, champion, rule)
    assert not worse.promoted and "new cases did not improve" in worse.reason
    assert not judge(gate_set, champion, champion, rule).promoted
    # Two new answers more is no significant gain (McNemar exact p = 0.5).
    slight = ["yes"] * 2 + ["no"] * 18 + ["yes"] * 100
    assert not judge(gate_set, champion, slight, rule).parts["new"].passed


def write_log(db: Path, log: LogContents) -> None:
    engine = open_database(db)
    create_tables(engine)
    with engine.begin() as conn:
        write_requests(conn, log.requests)
        write_feedback(conn, log.feedback)
        write_preferences(conn, log.preferences)
    engine.dispose()


def fake_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A run folder with a config (the bad-input checks stop before anything trains or loads)."""
    from tests.helpers import tiny_config
    from tunelab.config import dump_config

    cfg = tiny_config(tmp_path, tiny_model_dir)
    run = Path(cfg.output.dir) / cfg.output.name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def test_too_little_feedback_missing_gate_and_a_corrupt_log_exit_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = fake_run(tmp_path, tiny_model_dir)
    db = tmp_path / "log.db"
    write_log(db, seeded_log())
    assert main(["retrain", str(run), "--log", str(db), "--min-feedback", "20"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Too little feedback" in err and "at least 20 are needed" in err and "Collect 13 more" in err
    assert main(["retrain", str(run), "--log", str(db), "--gate", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(DataError, match="no new cases"):
        retrain(run, RetrainOptions(db=str(db), gate_fraction=0.0, min_feedback=1))
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    assert main(["retrain", str(run), "--log", str(corrupt)]) == 2
    assert "Cannot read the traffic log" in " ".join(capsys.readouterr().err.split())
    locked = sqlite3.connect(db, timeout=0)
    locked.execute("begin exclusive")
    try:
        started = time.monotonic()
        with pytest.raises(DataError, match="locked"):
            retrain(run, RetrainOptions(db=str(db)))
        assert time.monotonic() - started < 30
    finally:
        locked.rollback()
        locked.close()
    assert not list(tmp_path.glob("*champion.json")) and not list((tmp_path / "runs").glob("*retrain*"))


def test_lora_start_from_continues_a_saved_adapter_and_refuses_another_shape(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from tunelab.core.errors import ConfigError
    from tunelab.methods.lora import LoraConfig, apply_, save
    from tunelab.models.load import load_model

    torch.manual_seed(0)
    trained = apply_(load_model(str(tiny_model_dir)), LoraConfig(r=4))
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_()
    save(trained, tmp_path / "adapter")
    resumed = apply_(load_model(str(tiny_model_dir)), LoraConfig(r=4, start_from=str(tmp_path / "adapter")))
    saved = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in resumed.named_parameters() if "lora_" in n}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)
    assert all(p.requires_grad for p in loaded.values())
    with pytest.raises(ConfigError, match="does not fit"):
        apply_(load_model(str(tiny_model_dir)), LoraConfig(r=8, start_from=str(tmp_path / "adapter")))


@pytest.mark.parametrize("pairs", ["dpo", "kto"])
def test_choices_train_a_preference_stage_after_the_sft_challenger(
    pairs: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from tests.helpers import tiny_config
    from tunelab.recipes.run import run_training
    from tunelab.recipes.runs import run_config

    cfg = tiny_config(tmp_path, tiny_model_dir, "method.name=lora", "method.r=4", "training.max_steps=4",
                      "eval.generate=false", "eval.baseline=false", name="pref")  # fmt: skip
    champion = run_training(cfg).run_dir
    log = seeded_log()
    log.preferences.extend(
        Preference(306.0 + i, "review", chat(f"what is color of {w}"), "red", "a long answer about colours", "b", "a")
        for i, w in enumerate(["cat", "dog", "sky", "one"])
    )
    db = tmp_path / "log.db"
    write_log(db, log)
    options = RetrainOptions(db=str(db), out=tmp_path / "runs" / f"pref-{pairs}", pairs=pairs, promote=False,
                             overrides=["training.max_steps=2"])  # fmt: skip
    result = retrain(champion, options)
    assert result.challenger.name == f"challenger-{pairs}" and result.lineage["rows"]["pairs"] == 5
    stage = run_config(result.challenger)
    assert stage.objective.name == pairs and stage.objective.reference == "copy"  # type: ignore[union-attr]
    # The preference stage continued the SFT challenger's adapter, and wrote its own.
    sft = result.challenger.parent / "challenger"
    assert stage.method.start_from == str((sft / "adapter").resolve())  # type: ignore[union-attr]
    assert (result.challenger / "adapter" / "adapter_model.safetensors").is_file()
    pairs_file = (result.folder / "data" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs_file) == 5 and result.champion_file is None  # --no-promote: no pointer, whatever the gate said
