"""Continued pretraining on packed raw text, and a two-stage run (pretrain on domain text, then SFT) in one config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import yaml

from tests.tiny import write_color_task
from tunelab.config import load_config
from tunelab.methods.trained import load_trained
from tunelab.objectives.lm import causal_lm_loss
from tunelab.recipes.stages import STAGES_CONFIG, run_stages


def write_domain_text(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A tiny 'domain': short sentences with a fixed grammar."""
    rng = random.Random(seed)
    things, colors = ["cat", "dog", "mat", "sky"], ["red", "blue"]
    lines = [f"the {rng.choice(things)} is {rng.choice(colors)} and the {rng.choice(things)} sat" for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_packed_causal_loss_equals_separate_sequences(tiny_model_dir: Path) -> None:
    from tunelab.data.tokenize import Tokenized, collate
    from tunelab.models.load import load_model

    model = load_model(str(tiny_model_dir))
    a, b = [5, 9, 30, 41, 7], [12, 40, 8]
    separate = causal_lm_loss(model, collate([Tokenized(a, a, "a"), Tokenized(b, b, "b")], 0))
    packed_item = Tokenized(a + b, [*a, -100, *b[1:]], "ab", seq_lens=[5, 3])
    packed = causal_lm_loss(model, collate([packed_item], 0))
    # The same 6 targets: positions restart at b and b cannot see a, so packing changes nothing.
    assert packed.count == separate.count == 6
    torch.testing.assert_close(packed.loss_sum, separate.loss_sum, rtol=1e-5, atol=1e-5)


def test_pretrain_then_sft_in_one_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    text = write_domain_text(tmp_path / "domain.txt")
    chat = write_color_task(tmp_path / "color.jsonl", 120)
    common = {"precision": "fp32", "learning_rate": 3e-3, "batch_size": 8, "log_every": 2}
    raw = {
        "model": {"source": str(tiny_model_dir)},
        "data": {"train": [str(chat)], "max_length": 64},
        "training": common,
        "eval": {"generate": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "staged"},
        "stages": [
            {"objective": "pretrain", "data": {"train": [str(text)]}, "method": "full", "training": {"max_steps": 15}},
            {"objective": "sft", "method": {"name": "lora", "r": 4}, "training": {"max_steps": 20}},
        ],
    }
    cfg = load_config(None, [], base=raw)
    assert [s.name for s in cfg.stages] == ["stage-1-pretrain", "stage-2-sft"]
    assert cfg.stages[0].data.max_length == 64 and cfg.stages[1].data.train == [str(chat)]
    result = run_stages(cfg)
    run_dir = tmp_path / "runs" / "staged"
    summary = json.loads((run_dir / "stages.json").read_text())
    pretrain, sft = summary
    assert pretrain["objective"] == "pretrain" and sft["objective"] == "sft"
    assert (run_dir / STAGES_CONFIG).is_file()
    stage1 = json.loads((run_dir / "stage-1-pretrain" / "eval_baseline.json").read_text())
    assert pretrain["val_ppl"] < 0.5 * stage1["val_ppl"], "domain perplexity must drop"
    # The SFT stage starts from the pretrained weights (its baseline differs from the base model's) and learns.
    assert result.run_dir == run_dir / "stage-2-sft"
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.5
    model, tokenizer = load_trained(str(result.run_dir))
    stage2 = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert stage2["model"]["source"] == str(run_dir / "stage-1-pretrain" / "model")
    ids = tokenizer("what is color of cat", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(model(ids).logits, result.model(ids).logits)
