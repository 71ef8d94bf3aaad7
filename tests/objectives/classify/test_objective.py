"""Objective `classify`: task heads trained through `run_training` on a tiny BERT encoder and the tiny Llama.

Learnable toy tasks: the sentiment of a sentence is the one opinion word in it (good/great/fine vs bad/awful/poor);
people's names and two-word places are tagged B-PER, B-LOC I-LOC. Each run checks the loss falls, accuracy beats
chance, the trainable-parameter count matches a hand count, and the saved run reloads to identical logits.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from tests.helpers import ROOT
from tests.methods.test_methods import LORA_R4
from tests.tiny import WORDS
from tunelab.cli.main import main
from tunelab.config import load_config
from tunelab.core.errors import DataError
from tunelab.data.records import Example
from tunelab.eval.classify import evaluate_file
from tunelab.methods.base import trainable_parameters
from tunelab.models.load import load_tokenizer
from tunelab.objectives.classify.data import encode_sequence, encode_tagged, label_names
from tunelab.objectives.classify.metrics import bio_spans, entity_f1, macro_f1
from tunelab.objectives.classify.predict import load_classifier
from tunelab.recipes.run import run_training

POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "poor"]
NAMES, PLACES = ["alice", "bob", "carol"], [("san", "jose"), ("new", "york")]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(out: Path, seed: int = 0) -> Path:
    """A random 2-layer, 32-dim BERT with a WordPiece tokenizer trained on the toy vocabulary, saved as a bare
    `BertModel` folder (what sentence encoders look like, so tunelab loads it as an encoder)."""
    out.mkdir(parents=True, exist_ok=True)
    # A fixed vocabulary (a trained one ties merges differently from build to build): every word whole but the
    # names of five letters, which split into letters, so sub-words exercise the first-sub-token rule.
    words = {w.lower() for w in WORDS + POSITIVE + NEGATIVE + NAMES + [w for p in PLACES for w in p]}
    letters = sorted({c for w in words for c in w})
    whole = sorted(w for w in words if not (w in NAMES and len(w) >= 5))
    pieces = BERT_SPECIALS + letters + [f"##{c}" for c in letters] + whole
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(dict.fromkeys(pieces))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )  # fmt: skip
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )  # fmt: skip
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=fast.pad_token_id)  # fmt: skip
    BertModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def write_sentiment(path: Path, n: int, seed: int = 0, regression: bool = False) -> Path:
    """Sentences of 2-6 filler words with one opinion word at a random place; label pos/neg (or 0.9/0.1)."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(n):
            positive = rng.random() < 0.5
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
            label = (0.9 if positive else 0.1) if regression else ("pos" if positive else "neg")
            fh.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return path


def write_ner(path: Path, n: int, seed: int = 0) -> Path:
    """Filler words with a name (B-PER) and a two-word place (B-LOC I-LOC) at random places."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(n):
            tokens = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
            tags = ["O"] * len(tokens)
            at = rng.randint(0, len(tokens))
            tokens[at:at], tags[at:at] = [rng.choice(NAMES)], ["B-PER"]
            at = rng.randint(0, len(tokens))
            tokens[at:at], tags[at:at] = list(rng.choice(PLACES)), ["B-LOC", "I-LOC"]
            fh.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    return path


def classify_config(tmp_path: Path, model_dir: Path, train: Path, *overrides: str, name: str = "run"):
    val = train.with_name(f"val_{train.name}")
    if not val.exists():
        writer = write_ner if "token_classification" in " ".join(overrides) else write_sentiment
        writer(val, 48, seed=99, **({"regression": True} if "regression" in " ".join(overrides) else {}))
    return load_config(
        None,
        [
            f"data.train={train}", f"data.validation={val}", f"model.source={model_dir}",
            f"output.dir={tmp_path / 'runs'}", f"output.name={name}", "objective=classify", "method=lora",
            "method.r=4", "training.precision=fp32", "training.batch_size=16", "training.learning_rate=1e-2",
            "training.log_every=1", "eval.generate=false", *overrides,
        ],
    )  # fmt: skip


def _reloads_identically(result, batch_texts: list[str]) -> None:
    model, tokenizer = load_classifier(result.run_dir)
    enc = tokenizer(batch_texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        reloaded = model(enc["input_ids"], enc["attention_mask"])
        trained = result.model(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-4)
    assert model.cfg == result.model.cfg


# LoRA r=4 on every linear layer of the tiny BERT, r * (in + out) each: per layer query/key/value/attention
# output (32 -> 32) 4 x 4·64, intermediate (32 -> 64) and output (64 -> 32) 2 x 4·96; two layers; plus the
# pooler's dense layer (32 -> 32, present in a bare BertModel): 4·64.
BERT_LORA_R4 = 2 * (4 * 4 * 64 + 2 * 4 * 96) + 4 * 64  # 3,840


def test_encoder_sentiment_with_lora_body_and_full_head(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_sentiment(tmp_path / "sentiment.jsonl", 160)
    result = run_training(classify_config(tmp_path, tiny_bert_dir, train, "training.epochs=4"))
    assert result.model.pooling == "mean", "auto pooling on an encoder"
    assert trainable_parameters(result.model)[0] == BERT_LORA_R4 + 32 * 2 + 2  # LoRA body + the 2-class head
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.2
    assert result.final["val_acc"] >= 0.8 > result.baseline["val_acc"] + 0.2  # chance is 0.5
    assert result.final["val_macro_f1"] >= 0.8
    head = json.loads((result.run_dir / "adapter" / "head_config.json").read_text())
    assert head["config"]["labels"] == ["neg", "pos"]
    _reloads_identically(result, ["the cat is good", "a dog ran on the awful mat"])
    # `tunelab eval RUN --data FILE` scores the reloaded classifier on the validation file: the same numbers.
    out = tmp_path / "predictions.jsonl"
    assert main(["eval", str(result.run_dir), "--data", str(tmp_path / "val_sentiment.jsonl"), "--out", str(out)]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(predictions) == 48 and {p["prediction"] for p in predictions} <= {"neg", "pos"}
    right = sum(p["prediction"] == p["label"] for p in predictions) / len(predictions)
    assert right == pytest.approx(result.final["val_acc"])
    metrics, _ = evaluate_file(result.run_dir, tmp_path / "val_sentiment.jsonl")
    assert metrics["val_loss"] == pytest.approx(result.final["val_loss"], rel=1e-4)
    assert metrics["val_macro_f1"] == pytest.approx(result.final["val_macro_f1"])


def test_decoder_last_token_head(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = write_sentiment(tmp_path / "sentiment.jsonl", 160)
    result = run_training(classify_config(tmp_path, tiny_model_dir, train, "training.epochs=4"))
    assert result.model.pooling == "last", "auto pooling on a decoder"
    assert trainable_parameters(result.model)[0] == LORA_R4 + 48 * 2 + 2
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.2
    assert result.final["val_acc"] >= 0.8
    _reloads_identically(result, ["the cat is good", "a dog ran on the awful mat"])


def test_token_classification_bio(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_ner(tmp_path / "ner.jsonl", 160)
    cfg = classify_config(tmp_path, tiny_bert_dir, train, "objective.task=token_classification", "training.epochs=4")
    result = run_training(cfg)
    assert result.model.cfg.labels == ["O", "B-LOC", "B-PER", "I-LOC"]
    assert trainable_parameters(result.model)[0] == BERT_LORA_R4 + 32 * 4 + 4
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.3
    assert result.final["val_acc"] >= 0.9  # token accuracy
    assert result.final["val_entity_f1"] >= 0.8 > result.baseline["val_entity_f1"]
    _reloads_identically(result, ["alice sat on the mat in san jose"])


def test_regression_head(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_sentiment(tmp_path / "scores.jsonl", 160, regression=True)
    cfg = classify_config(tmp_path, tiny_bert_dir, train, "objective.task=regression", "objective.pooling=cls",
                          "training.epochs=4")  # fmt: skip
    result = run_training(cfg)
    assert result.model.pooling == "cls" and result.model.head.out_features == 1
    assert result.final["val_mse"] == pytest.approx(result.final["val_loss"], rel=1e-4)  # the loss is the MSE
    assert result.final["val_mse"] < 0.5 * result.baseline["val_mse"]
    _reloads_identically(result, ["the cat is good"])


def test_wrong_data_and_unknown_labels_are_data_errors(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_sentiment(tmp_path / "sentiment.jsonl", 20)
    cfg = classify_config(tmp_path, tiny_bert_dir, train, "objective.task=token_classification", name="a")
    with pytest.raises(DataError, match="trains on token_classification records only"):
        run_training(cfg)
    train = write_sentiment(tmp_path / "sentiment_b.jsonl", 20)
    cfg = classify_config(tmp_path, tiny_bert_dir, train, "objective.labels=[neg, neutral]", name="b")
    with pytest.raises(DataError, match=r"'pos' are not among objective\.labels"):
        run_training(cfg)


def test_words_map_to_first_tokens(tiny_bert_dir: Path, tiny_model_dir: Path) -> None:
    example = Example(kind="token_classification", text="alice sat in san jose", label="B-PER O O B-LOC I-LOC")
    tags = [2, 0, 0, 1, 3]
    for folder in (tiny_bert_dir, tiny_model_dir):
        tokenizer = load_tokenizer(str(folder))
        ids, labels = encode_tagged(example, tokenizer, 64, tags)
        tokens = tokenizer.convert_ids_to_tokens(ids)
        # A word starts at the first real token and wherever WordPiece has no '##' / byte-level BPE has its space
        # mark 'Ġ' (after a lone 'Ġ' token, at the next one); the word's tag sits there and every other token
        # (special, lone space, later piece) is ignored.
        real = [t not in tokenizer.all_special_tokens and t != "Ġ" for t in tokens]
        bpe = "Ġ" in "".join(tokens)
        firsts = [
            r and (i == real.index(True) or (t[0] == "Ġ" or tokens[i - 1] == "Ġ" if bpe else not t.startswith("##")))
            for i, (t, r) in enumerate(zip(tokens, real, strict=True))
        ]
        assert len(tokens) > 7, "some words split into several tokens"
        assert [t for t, first in zip(labels, firsts, strict=True) if first] == tags, (folder, tokens)
        assert all(t == -100 for t, first in zip(labels, firsts, strict=True) if not first)
    cut = encode_tagged(example, load_tokenizer(str(tiny_bert_dir)), 4, tags)[1]  # [CLS] + 2 tokens + [SEP]
    assert [t for t in cut if t != -100] == tags[: sum(t != -100 for t in cut)] and len(cut) == 4
    with pytest.raises(ValueError, match="5 words for 4 tags"):
        encode_tagged(example, load_tokenizer(str(tiny_bert_dir)), 64, tags[:4])


def test_text_pairs_and_length_limits(tiny_bert_dir: Path, tiny_model_dir: Path) -> None:
    pair = Example(kind="classification", text="the cat sat", text_pair="a dog ran", label="x")
    bert = load_tokenizer(str(tiny_bert_dir))
    ids = encode_sequence(pair, bert, 64)
    assert bert.convert_ids_to_tokens(ids).count("[SEP]") == 2 and ids[0] == bert.cls_token_id  # BERT's pair form
    llama = load_tokenizer(str(tiny_model_dir))  # no separator token: the texts are joined by a newline
    assert encode_sequence(pair, llama, 64) == llama("the cat sat\na dog ran")["input_ids"]
    assert len(encode_sequence(pair, bert, 5)) == 5
    with pytest.raises(ValueError, match=r"more than data\.max_length=5"):
        encode_sequence(pair, bert, 5, truncation="reject")


def test_label_names_and_scores_by_hand() -> None:
    records = [Example(kind="classification", text="x", label=x) for x in ("10", "2", "2", "-1")]
    assert label_names(records, "sequence_classification") == ["-1", "2", "10"]
    tagged = [Example(kind="token_classification", text="a b c", label="I-X O B-X")]
    assert label_names(tagged, "token_classification") == ["O", "B-X", "I-X"]
    # F1 = 2·tp / (2·tp + fp + fn): class 0 (tp 1, fp 1, fn 1) 1/2; class 1 (tp 1, fn 1) 2/3; class 3 (fp 1) 0;
    # class 2 is neither in the gold labels nor predicted, so it is left out of the mean.
    assert macro_f1([0, 0, 1, 3], [0, 1, 1, 0], 4) == pytest.approx((1 / 2 + 2 / 3 + 0.0) / 3)
    assert bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]) == {
        ("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("PER", 5, 6)
    }  # fmt: skip
    # Gold: PER(0,2), LOC(3,4). Predicted: PER(0,1) wrong boundary, LOC(3,4) right -> P 1/2, R 1/2, F1 1/2.
    assert entity_f1([["B-PER", "O", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]) == pytest.approx(0.5)


def test_every_example_config_validates() -> None:
    configs = sorted(ROOT.glob("examples/*/config.yaml"))
    assert any(p.parent.name == "classify" for p in configs)
    for path in configs:
        cfg = load_config(path)
        for data in cfg.data.train + cfg.data.validation:
            assert Path(data).is_file(), f"{path}: {data} is missing"
