"""Augmentation: seeded EDA, oversampling, paraphrases and SMOTE, all marked synthetic and counted."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tunelab.core.types import Message
from tunelab.data.augment import augment_eda, eda, oversample, paraphrase, smote_embeddings
from tunelab.data.records import Example
from tunelab.data.store import PreparedDataset


def labelled(text: str, label: str, line: int) -> Example:
    return Example(kind="classification", text=text, label=label, origin=f"f:{line}")


def test_eda_is_seeded_and_changes_words_only() -> None:
    text = "the quick brown fox jumps over the lazy dog"
    a, b = eda(text, random.Random(1), 0.2), eda(text, random.Random(1), 0.2)
    assert a == b and a != text and set(a.split()) <= set(text.split())
    variants = augment_eda([labelled(text, "x", 1), Example([Message("user", "q")], "f:2")], 3, 0.2, seed=0)
    assert len(variants) == 3 and all(v.synthetic and v.label == "x" and v.kind == "classification" for v in variants)
    assert [v.origin for v in variants] == ["f:1#eda1", "f:1#eda2", "f:1#eda3"]
    assert variants[0].meta == {"augmented": "eda", "source": "f:1"}


def test_oversample_balances_labels() -> None:
    data = [labelled(f"a{i}", "a", i) for i in range(5)] + [labelled("b", "b", 9)]
    extra = oversample(data, seed=0)
    assert Counter(e.label for e in data + extra) == {"a": 5, "b": 5} and all(e.synthetic for e in extra)


def test_paraphrase_rewrites_the_prompt_and_keeps_the_answer() -> None:
    chat = Example([Message("user", "what is 2+2"), Message("assistant", "4")], "f:1")
    seen = []

    def fake_generate(prompts: list[list[Message]]) -> list[str]:
        seen.extend(prompts)
        return ["how much is two plus two", "what is 2+2"]  # the second is unchanged: dropped

    out = paraphrase([chat, labelled("what is 2+2", "q", 2)], fake_generate)
    assert len(seen) == 2 and "what is 2+2" in seen[0][0].content
    (made,) = out
    assert made.messages[0].content == "how much is two plus two" and made.messages[1].content == "4"
    assert made.synthetic and made.meta["augmented"] == "paraphrase"


def test_smote_fills_the_minority_class() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (10, 4)), rng.normal(5, 1, (3, 4))])
    labels = ["big"] * 10 + ["small"] * 3
    out, y, synthetic = smote_embeddings(x, labels, k=5, seed=0)
    assert Counter(y.tolist()) == {"big": 10, "small": 10} and synthetic.sum() == 7
    assert np.array_equal(out[:13], x) and (out[synthetic].mean(0) > 2).all()  # new points lie among the small class


def test_pipeline_marks_and_counts_synthetic_records(tmp_path: Path) -> None:
    from tunelab.data.config import DataSection
    from tunelab.data.pipeline import prepare_dataset

    path = tmp_path / "d.csv"
    path.write_text(
        "text,label\n" + "".join(f"good film number {i} was fine,pos\n" for i in range(6)) + "bad one,neg\n"
    )
    cfg = DataSection(train=[str(path)], val_fraction=0.0, cache_dir=str(tmp_path / "c"),
                      augment={"eda": 1, "oversample": True})  # fmt: skip
    r = prepare_dataset(cfg, tokenizer=_NoTokenizer(), seed=0, out_dir=tmp_path / "out").report
    assert r["augmented"] == {"eda": 7, "oversample": 10} and r["labels"] == {"pos": 12, "neg": 12}
    assert r["synthetic"] == sum(r["augmented"].values()) and r["accounting"]["kept"] == 7


class _NoTokenizer:
    """Classification records are not tokenized; the fingerprint only needs these attributes."""

    backend_tokenizer = None
    chat_template = eos_token = pad_token = bos_token = None

    def get_vocab(self) -> dict[str, int]:
        return {}


@pytest.mark.slow
def test_smote_on_embedded_encoder_embeddings(tmp_path: Path) -> None:
    from tunelab.data.config import DataSection
    from tunelab.data.pipeline import prepare_dataset

    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"a happy review {i},pos\n" for i in range(6)) + "awful,neg\nbad,neg\n")
    cfg = DataSection(train=[str(path)], val_fraction=0.0, cache_dir=str(tmp_path / "c"), augment={"smote": True})
    prepared = prepare_dataset(cfg, tokenizer=_NoTokenizer(), seed=0, out_dir=tmp_path / "out")
    saved = np.load(prepared.folder / "train_smote.npz")
    assert saved["embeddings"].shape == (12, 384) and int(saved["synthetic"].sum()) == 4


def test_setfit_head_is_fitted_on_smote_embeddings_of_the_trained_encoder(tmp_path: Path) -> None:
    from tests.objectives.embed.test_contrastive import _tiny_bert, _word_tokenizer
    from tests.objectives.embed.test_setfit import _rows
    from tunelab.config import load_config
    from tunelab.core.errors import DataError
    from tunelab.methods.trained import artifact_dir
    from tunelab.objectives.embed.setfit_head import HEAD_FILE, fit_head
    from tunelab.recipes.run import run_training

    tokenizer = _word_tokenizer()
    folder = tmp_path / "bert"
    _tiny_bert(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = _rows(40, 0)
    kept = [r for r in rows if r["label"] == "animal"] + [r for r in rows if r["label"] == "thing"][:4]  # 20 vs 4
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in kept))
    cfg = load_config(None, [
        f"data.train={train}", "data.val_fraction=0", f"model.source={folder}", "objective=setfit",
        "objective.pairs_per_text=1", "method=full", "training.max_steps=1", "training.precision=fp32",
        "data.augment.smote=true", "data.augment.smote_k=3", f"data.augment.encoder={folder}",
        f"data.cache_dir={tmp_path / 'c'}", "eval.baseline=false", f"output.dir={tmp_path / 'runs'}",
    ])  # fmt: skip
    result = run_training(cfg)
    saved = artifact_dir(result.run_dir, "full")
    recorded = json.loads((saved / HEAD_FILE).read_text())
    assert recorded["smote_synthetic"] == 16 and recorded["train_examples"] == 24  # 4 'thing' brought up to 20
    report = json.loads((result.run_dir / "report.json").read_text())  # setfit's data report
    assert report["smote"]["synthetic"] == 16 and report["smote"]["vectors"] == 40  # the pipeline's frozen-encoder copy
    npz = np.load(Path(report["dataset"]) / "train_smote.npz")
    assert npz["synthetic"].sum() == 16 and set(npz["origins"][~npz["synthetic"]]) == {
        r["origin"] for r in PreparedDataset(Path(report["dataset"]), report).table("train_records").to_pylist()
    }
    # The saved head is what fitting on real + synthetic vectors gives, not on the real ones alone.
    from tunelab.models.load import load_model
    from tunelab.models.pooling import encode

    vectors = encode(load_model(str(saved)), tokenizer, [r["text"] for r in kept]).float().numpy()
    x, y, _ = smote_embeddings(vectors, [r["label"] for r in kept], k=3)
    expected = fit_head(x, [str(v) for v in y])
    assert np.allclose(recorded["coef"], expected.coef, atol=1e-4)
    assert not np.allclose(recorded["coef"], fit_head(vectors, [r["label"] for r in kept]).coef, atol=1e-4)
    with pytest.raises(DataError, match="at least 2 per class"):
        smote_embeddings(vectors[:21], [r["label"] for r in kept][:21])
