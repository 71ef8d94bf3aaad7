"""Objective `classify` with `task_heads`: one LoRA body, one head per task (own label set), rows routed to their
task's head; saved heads reload to identical logits; learned uncertainty weights are logged and survive a resume.

Toy tasks on a tiny random BERT (a word-level tokenizer with a fixed vocabulary, so every run sees the same token
ids): `sentiment` (pos/neg: the one opinion word) and `person` (alice/bob/carol: the one name in the sentence), or
`scores` (sentiment as a number, for a regression head).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from tests.objectives.classify.test_objective import (
    BERT_LORA_R4,
    BERT_SPECIALS,
    NAMES,
    NEGATIVE,
    POSITIVE,
    write_sentiment,
)
from tests.tiny import WORDS
from tunelab.cli.main import main
from tunelab.config import load_config
from tunelab.core.errors import ConfigError, DataError
from tunelab.eval.classify import evaluate_file
from tunelab.methods.base import trainable_parameters
from tunelab.models.load import load_model
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.data import ClassItem, collate_items
from tunelab.objectives.classify.multi import MultiHeadModel, task_heads_loss
from tunelab.objectives.classify.predict import load_classifier
from tunelab.recipes.run import run_training
from tunelab.regularizers.task_weighting import TaskWeighting
from tunelab.train.metrics import read_metrics

TIMING_KEYS = {"tokens_per_s", "peak_mem_mb", "elapsed_s"}


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_word_bert(tmp_path_factory.mktemp("word-bert"))


def build_word_bert(out: Path) -> Path:
    """A random 2-layer, 32-dim BERT whose tokenizer maps each toy word to one id, from a vocabulary given in
    order (a trained WordPiece vocabulary breaks count ties differently from one build to the next)."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys(BERT_SPECIALS + WORDS + POSITIVE + NEGATIVE + NAMES))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )  # fmt: skip
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=vocab["[PAD]"])  # fmt: skip
    BertModel(config).save_pretrained(out, safe_serialization=True)
    return out


def write_person(path: Path, n: int, seed: int = 0) -> Path:
    """Sentences of 2-5 filler words with one name at a random place; the label is the name (3 classes)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
            name = rng.choice(NAMES)
            words.insert(rng.randint(0, len(words)), name)
            fh.write(json.dumps({"text": " ".join(words), "label": name}) + "\n")
    return path


def two_tasks(tmp_path: Path, n: int = 160, second: str = "person") -> tuple[list[Path], list[Path]]:
    """Training and validation files; a validation file shares its training file's stem, so its rows carry the
    same task tag."""
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "val").mkdir(exist_ok=True)
    train = [write_sentiment(tmp_path / "train" / "sentiment.jsonl", n)]
    val = [write_sentiment(tmp_path / "val" / "sentiment.jsonl", 48, seed=99)]
    if second == "person":
        train.append(write_person(tmp_path / "train" / "person.jsonl", n, seed=1))
        val.append(write_person(tmp_path / "val" / "person.jsonl", 48, seed=98))
    else:
        train.append(write_sentiment(tmp_path / "train" / "scores.jsonl", n, seed=2, regression=True))
        val.append(write_sentiment(tmp_path / "val" / "scores.jsonl", 48, seed=97, regression=True))
    return train, val


def heads_config(tmp_path: Path, model_dir: Path, train: list[Path], val: list[Path], *overrides: str, name="run"):
    return load_config(None, [
        f"data.train=[{','.join(map(str, train))}]", f"data.validation=[{','.join(map(str, val))}]",
        f"model.source={model_dir}", f"output.dir={tmp_path / 'runs'}", f"output.name={name}", "objective=classify",
        "objective.task_heads=true", "method=lora", "method.r=4", "training.precision=fp32",
        "training.batch_size=16", "training.learning_rate=1e-2", "training.log_every=1", "eval.generate=false",
        *overrides,
    ])  # fmt: skip


def logits_by_task(model: MultiHeadModel, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return {t: model(enc["input_ids"], enc["attention_mask"], t) for t in model.tasks}


def test_two_classification_tasks_one_body_two_heads(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train, val = two_tasks(tmp_path)
    result = run_training(heads_config(tmp_path, tiny_bert_dir, train, val, "training.epochs=6"))
    model = result.model
    assert isinstance(model, MultiHeadModel) and model.tasks == ["person", "sentiment"]
    assert [h.out_features for h in model.head] == [3, 2]
    # One LoRA body (the same 3,840 as a single-task run) + a 3-class head (32·3 + 3) + a 2-class head (32·2 + 2).
    assert trainable_parameters(model)[0] == BERT_LORA_R4 + (32 * 3 + 3) + (32 * 2 + 2)
    base, final = result.baseline, result.final
    assert final["val_loss"] < base["val_loss"] - 0.3
    for task, chance in (("person", 1 / 3), ("sentiment", 1 / 2)):
        assert final[f"val_loss/{task}"] < base[f"val_loss/{task}"] - 0.4
        assert final[f"val_acc/{task}"] >= 0.9 > chance + 0.2 > base[f"val_acc/{task}"]
        assert final[f"val_macro_f1/{task}"] >= 0.9
    losses = [m["loss"] for m in read_metrics(result.run_dir) if "loss" in m]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5

    saved = json.loads((result.run_dir / "adapter" / "task_heads.json").read_text())
    assert [(t["task"], t["config"]["labels"]) for t in saved["tasks"]] == [
        ("person", ["alice", "bob", "carol"]), ("sentiment", ["neg", "pos"])
    ]  # fmt: skip
    assert not (result.run_dir / "adapter" / "head_config.json").exists()
    reloaded, tokenizer = load_classifier(result.run_dir)
    texts = ["the cat is good", "bob sat on the awful mat", "carol ran"]
    after, before = logits_by_task(reloaded, tokenizer, texts), logits_by_task(model.eval(), tokenizer, texts)
    for task in model.tasks:
        torch.testing.assert_close(after[task], before[task], atol=1e-5, rtol=1e-4)
    assert reloaded.cfgs == model.cfgs

    # `tunelab eval` on one task's file: that task's head, the run's own validation numbers for it.
    out = tmp_path / "person_predictions.jsonl"
    assert main(["eval", str(result.run_dir), "--data", str(val[1]), "--out", str(out)]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(predictions) == 48 and {p["prediction"] for p in predictions} <= set(NAMES)
    right = sum(p["prediction"] == p["label"] for p in predictions) / len(predictions)
    assert right == pytest.approx(final["val_acc/person"])
    # One file holding both tasks (rows name their task): per-task metrics, equal to training's.
    mixed = tmp_path / "mixed.jsonl"
    rows = [{**json.loads(line), "task": f.stem} for f in val for line in f.read_text().splitlines()]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics, predicted = evaluate_file(result.run_dir, mixed)
    for key in ("val_loss", "val_acc/person", "val_acc/sentiment", "val_macro_f1/person", "val_macro_f1/sentiment"):
        assert metrics[key] == pytest.approx(final[key], rel=1e-4), key
    assert {p["prediction"] for p in predicted if p["task"] == "sentiment"} <= {"neg", "pos"}
    stranger = tmp_path / "people.jsonl"  # its stem is its rows' task, and no head has that name
    shutil.copy(val[1], stranger)
    with pytest.raises(DataError, match=r"task\(s\) 'people', for which run .* has no head \(its tasks: person, sent"):
        evaluate_file(result.run_dir, stranger)


def test_rows_go_to_their_own_head(tiny_bert_dir: Path) -> None:
    """The routed loss equals, row by row, the loss of each row through its own task's head (by hand), for a
    batch mixing a 2-class task, a 3-class task and a regression task; a head gets no gradient from other rows."""
    torch.manual_seed(0)
    cfgs = {
        "a": HeadConfig(num_labels=2, labels=["x", "y"]),
        "b": HeadConfig(num_labels=3, labels=["p", "q", "r"]),
        "s": HeadConfig(num_labels=1, problem="regression"),
    }
    model = MultiHeadModel(load_model(str(tiny_bert_dir)), cfgs).eval()  # eval: no dropout in the body
    # (token ids, target, head): rows of head 0 (2 classes), 1 (3 classes) and 2 (regression), interleaved.
    rows = [([2, 10, 11, 3], 1, 0), ([2, 12, 3], 2, 1), ([2, 13, 14, 15, 3], 0.9, 2), ([2, 16, 3], 0, 1),
            ([2, 17, 3], 0, 0)]  # fmt: skip
    items = [ClassItem(ids, target, head=head) for ids, target, head in rows]
    batch = collate_items(items, pad_id=0)
    assert batch["head"].tolist() == [0, 1, 2, 1, 0] and batch["labels"].dtype == torch.float32
    parts = task_heads_loss(model, batch)

    features = model.features(batch["input_ids"], batch["attention_mask"])
    expected = (
        F.cross_entropy(model.head[0](features[[0, 4]]), torch.tensor([1, 0]), reduction="sum")
        + F.cross_entropy(model.head[1](features[[1, 3]]), torch.tensor([2, 0]), reduction="sum")
        + (model.head[2](features[2]).squeeze() - 0.9) ** 2
    )
    torch.testing.assert_close(parts.loss_sum, expected)
    assert int(parts.count) == 5
    # A row's logits come from its own head only: a 3-wide head could not score a 2-class row, and the 2-class
    # row's logits equal the single-task forward through head a.
    torch.testing.assert_close(model(batch["input_ids"][[0]], batch["attention_mask"][[0]], "a"),
                               model.head[0](features[[0]]))  # fmt: skip

    only_b = collate_items([items[1], items[3]], pad_id=0)
    task_heads_loss(model, only_b).loss_sum.backward()
    assert model.head[0].weight.grad is None and model.head[2].weight.grad is None
    assert model.head[1].weight.grad.abs().sum() > 0


def test_classification_and_regression_heads_mix(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train, val = two_tasks(tmp_path, second="scores")
    cfg = heads_config(tmp_path, tiny_bert_dir, train, val, "objective.tasks={scores: {task: regression}}",
                       "training.epochs=6", "training.learning_rate=3e-3")  # fmt: skip
    result = run_training(cfg)
    model = result.model
    assert model.tasks == ["scores", "sentiment"] and [h.out_features for h in model.head] == [1, 2]
    assert trainable_parameters(model)[0] == BERT_LORA_R4 + (32 + 1) + (32 * 2 + 2)
    final, base = result.final, result.baseline
    assert final["val_mse/scores"] == pytest.approx(final["val_loss/scores"], rel=1e-4)  # the loss is the MSE
    # Targets 0.1 / 0.9 about equally often: the best constant (0.5) scores an MSE of 0.4² = 0.16.
    assert final["val_mse/scores"] < 0.5 * 0.16 < base["val_mse/scores"]
    assert final["val_acc/sentiment"] >= 0.8 and "val_macro_f1/scores" not in final
    reloaded, tokenizer = load_classifier(result.run_dir)
    texts = ["the cat is good", "a dog sat"]
    after, before = logits_by_task(reloaded, tokenizer, texts), logits_by_task(model, tokenizer, texts)
    for task in model.tasks:
        torch.testing.assert_close(after[task], before[task], atol=1e-5, rtol=1e-4)


def comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in read_metrics(run_dir)]


def test_uncertainty_weights_logged_and_restored_on_resume(
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with learned uncertainty weights logs s_t and exp(-s_t) at every log step; a run stopped after its
    step-4 checkpoint (the later checkpoint and the saved model removed, as a kill would leave it) and resumed
    ends with the metrics of the uninterrupted run, s_t included (without restoring them, step 5 would restart
    from s_t = 0)."""
    train, val = two_tasks(tmp_path, n=96)
    # LoRA on every linear layer, the pooler's too: unused under a head, its LoRA weights never get a gradient nor
    # optimizer state, and the resume must still restore everything else.
    cfg = heads_config(tmp_path, tiny_bert_dir, train, val, "training.task_weighting=uncertainty",
                       "training.max_steps=8", "training.save_every=4",
                       "training.keep_checkpoints=5", "eval.baseline=false")  # fmt: skip
    result = run_training(cfg)
    straight = comparable(result.run_dir)
    logged = [m for m in straight if "loss" in m]
    assert [m["step"] for m in logged] == list(range(1, 9))
    for m in logged:
        for task in ("person", "sentiment"):
            assert m[f"task_weight/{task}"] == pytest.approx(torch.tensor(-m[f"task_log_var/{task}"]).exp().item())
    assert all(abs(logged[-1][f"task_log_var/{t}"]) > 1e-3 for t in ("person", "sentiment")), "s_t were learned"
    state = json.loads((result.run_dir / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["task_log_vars"] == pytest.approx({t: logged[3][f"task_log_var/{t}"] for t in ("person", "sentiment")})

    shutil.rmtree(result.run_dir / "checkpoints" / "step-00000008")
    shutil.rmtree(result.run_dir / "adapter")
    resumed = run_training(cfg, resume=True)
    again = comparable(resumed.run_dir)
    assert len(again) == len(straight)
    for a, b in zip(again, straight, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value), key

    # The same resume without putting the s_t back: step 5 starts again from s_t = 0 and the runs part.
    shutil.rmtree(result.run_dir / "checkpoints" / "step-00000008")
    shutil.rmtree(result.run_dir / "adapter")
    monkeypatch.setattr(TaskWeighting, "restore", lambda *args: None)
    forgetful = [m for m in comparable(run_training(cfg, resume=True).run_dir) if "loss" in m]
    assert forgetful[4]["task_log_var/person"] != pytest.approx(logged[4]["task_log_var/person"], rel=1e-3)


def test_task_head_mistakes_are_clear_errors(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train, val = two_tasks(tmp_path, n=20)
    stray = write_person(tmp_path / "val" / "people.jsonl", 8)
    with pytest.raises(DataError, match=r"'people' .* have no training rows.*person, sentiment"):
        run_training(heads_config(tmp_path, tiny_bert_dir, train, [*val, stray], name="a"))
    with pytest.raises(ConfigError, match=r"'persn', which no training row has\. Did you mean 'person'"):
        run_training(heads_config(tmp_path, tiny_bert_dir, train, val, "objective.tasks={persn: {labels: [a, b]}}",
                                  name="b"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"add objective\.task_heads: true"):
        load_config(None, ["objective=classify", "objective.tasks={person: {task: regression}}", "data.train=[x]"])
    with pytest.raises(ConfigError, match=r"objective\.tasks\.<task>\.labels"):
        load_config(None, ["objective=classify", "objective.task_heads=true", "objective.labels=[a]", "data.train=[x]"])
    with pytest.raises(ConfigError, match="tag tokens but the others label whole sequences"):
        run_training(heads_config(tmp_path, tiny_bert_dir, train, val,
                                  "objective.tasks={person: {task: token_classification}}", name="c"))  # fmt: skip
    with pytest.raises(DataError, match=r"label '(alice|bob|carol)' is not a number"):
        run_training(heads_config(tmp_path, tiny_bert_dir, train, val,
                                  "objective.tasks={person: {task: regression}}", name="d"))  # fmt: skip
