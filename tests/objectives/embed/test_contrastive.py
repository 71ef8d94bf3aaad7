"""Embeddings: InfoNCE / Matryoshka and retrieval metrics against hand-computed values; mean pooling; training a
tiny BERT (2 layers, 32 dims) improves retrieval."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from tunelab.core.errors import DataError
from tunelab.data.records import Example
from tunelab.models.pooling import encode, mean_pool
from tunelab.objectives.embed.contrastive import (
    OBJECTIVE,
    ContrastiveConfig,
    EmbedItem,
    collate_embed,
    contrastive_loss,
)
from tunelab.objectives.embed.losses import info_nce, matryoshka
from tunelab.objectives.embed.retrieval import evaluate_retrieval, retrieval_metrics
from tunelab.objectives.embed.train import collate_pairs, pair_batches, train_embedder
from tunelab.recipes.run import prepare_args

R = 1 / math.sqrt(2)


def test_info_nce_by_hand() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # the norm does not matter: cosine similarity
    positives = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cos: a1·p1 = 1, a1·p2 = 1/√2; a2·p1 = 0, a2·p2 = 1/√2. With scale 1:
    l1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(R)))
    l2 = -math.log(math.exp(R) / (math.exp(0) + math.exp(R)))
    assert info_nce(anchors, positives, scale=1.0).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    # A hard negative [-1, 0] joins every anchor's candidates: cos a1 = -1, a2 = 0; at scale 2.
    negatives = torch.tensor([[-1.0, 0.0]])
    h1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * R) + math.exp(-2)))
    h2 = -math.log(math.exp(2 * R) / (math.exp(0) + math.exp(2 * R) + math.exp(0)))
    assert info_nce(anchors, positives, negatives, scale=2.0).item() == pytest.approx((h1 + h2) / 2, rel=1e-6)
    # Symmetric: the positive side picks among anchors: p1 vs (a1: 1, a2: 0); p2 vs (a1: 1/√2, a2: 1/√2).
    s1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(0)))
    s2 = math.log(2)
    sym = info_nce(anchors, positives, scale=1.0, symmetric=True).item()
    assert sym == pytest.approx(((l1 + l2) / 2 + (s1 + s2) / 2) / 2, rel=1e-6)


def test_matryoshka_sums_the_truncated_losses() -> None:
    anchors = torch.tensor([[1.0, 5.0], [-1.0, 2.0]])
    positives = torch.tensor([[2.0, -1.0], [-3.0, 0.5]])
    # In 1 dimension every normalised vector is ±1: cosines [[1, -1], [-1, 1]], so each term is log(1 + e^{-2s}).
    one_dim = math.log(1 + math.exp(-2 * 3.0))
    assert matryoshka(info_nce, anchors, positives, dims=[1], scale=3.0).item() == pytest.approx(one_dim, rel=1e-4)
    both = matryoshka(info_nce, anchors, positives, dims=[1, 2], weights=[0.5, 2.0], scale=3.0).item()
    assert both == pytest.approx(0.5 * one_dim + 2.0 * info_nce(anchors, positives, scale=3.0).item(), rel=1e-6)


def test_retrieval_metrics_by_hand() -> None:
    rankings = [["d1", "d2", "d3", "d4"], ["d4", "d3", "d2", "d1"]]
    relevant = [{"d2", "d4"}, {"d1"}]
    m = retrieval_metrics(rankings, relevant, ks=(1, 3))
    # q1: hits at ranks 2 and 4; q2: hit at rank 4.
    assert m["recall@1"] == 0.0
    assert m["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    # nDCG@3: q1 DCG = 1/log2(3), ideal (2 relevant) = 1 + 1/log2(3); q2 DCG = 0.
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 2)
    assert m["ndcg@1"] == 0.0
    with pytest.raises(DataError, match="no relevant"):
        retrieval_metrics([["d1"]], [set()])


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


TOPICS = ["cat", "dog", "river", "piano", "apple", "train", "cloud", "chess", "tiger", "coffee", "glass", "moon"]
ATTRS = ["red", "fast", "old", "small", "loud", "cold", "green", "heavy", "tall", "soft"]


def _pairs(seed: int) -> list[Example]:
    # Queries name two words; the positive describes the same two words in another form: learnable by a tiny model
    # only by matching the words, since the templates are shared by all documents.
    rng = random.Random(seed)
    out = []
    for _ in range(96):
        t, a = rng.choice(TOPICS), rng.choice(ATTRS)
        out.append(Example(kind="pairs", anchor=f"which {t} is {a}", positive=f"the {a} {t} is here"))
    return out


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the test vocabulary: a 40-row embedding keeps training to a second or two."""
    words = sorted({w for t in TOPICS for w in t.split()} | set(ATTRS) | {"which", "is", "the", "here", "q", "p", "n"})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words, *map(str, range(10))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def _tiny_bert(tokenizer) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return BertModel(config, add_pooling_layer=False)


def test_training_a_tiny_bert_improves_retrieval() -> None:
    tokenizer = _word_tokenizer()
    model = _tiny_bert(tokenizer)
    queries = {f"q{i}-{a}": f"which {t} is {a}" for i, t in enumerate(TOPICS) for a in ATTRS}
    corpus = {f"d{i}-{a}": f"the {a} {t} is here" for i, t in enumerate(TOPICS) for a in ATTRS}
    qrels = {q: {"d" + q[1:]} for q in queries}
    before = evaluate_retrieval(model, tokenizer, queries, corpus, qrels, ks=(1, 5))
    examples = _pairs(0)
    batch = collate_pairs(tokenizer, examples[:4])
    assert set(batch) == {"anchor_input_ids", "anchor_attention_mask", "positive_input_ids", "positive_attention_mask"}
    history = train_embedder(
        model, tokenizer, examples, epochs=3, batch_size=16, learning_rate=5e-3, scale=20.0, matryoshka_dims=[16, 32]
    )
    after = evaluate_retrieval(model, tokenizer, queries, corpus, qrels, ks=(1, 5))
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-4:]) / 4
    assert last < 0.7 * first, (first, last)
    assert after["mrr"] > before["mrr"] + 0.15, (before, after)
    half = evaluate_retrieval(model, tokenizer, queries, corpus, qrels, ks=(1, 5), dims=16)
    assert half["mrr"] > before["mrr"], "the Matryoshka prefix works on its own"
    assert encode(model, tokenizer, ["a", "b"]).norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])


def test_contrastive_loss_is_a_sum_over_anchors_with_hard_negatives() -> None:
    tokenizer = _word_tokenizer()
    model = _tiny_bert(tokenizer).eval()  # no dropout, so the two forwards agree
    examples = [Example(kind="pairs", anchor=f"q {i}", positive=f"p {i}", negative=f"n {i}") for i in range(3)]
    batch = collate_pairs(tokenizer, examples)
    assert "negative_input_ids" in batch
    parts = contrastive_loss(model, batch, ContrastiveConfig(scale=5.0))
    assert int(parts.count) == 3 == OBJECTIVE.count(batch) and 0 <= int(parts.correct) <= 3
    with torch.no_grad():
        vec = {
            r: model(input_ids=batch[f"{r}_input_ids"]).last_hidden_state for r in ("anchor", "positive", "negative")
        }
        pooled = {r: mean_pool(v, batch[f"{r}_attention_mask"]) for r, v in vec.items()}
        expected = 3 * info_nce(pooled["anchor"], pooled["positive"], pooled["negative"], scale=5.0)
    assert parts.loss_sum.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pair_batches_keep_duplicate_positives_apart() -> None:
    examples = [Example(kind="pairs", anchor=f"a{i}", positive=f"p{i % 3}") for i in range(9)]
    batches = pair_batches(examples, batch_size=3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len({examples[i].positive for i in b}) == len(b) for b in batches)
    with pytest.raises(DataError, match="anchor"):
        train_embedder(None, None, [Example(kind="pairs", anchor="x")])


def test_collate_embed_pads_each_role_and_drops_ragged_negatives() -> None:
    items = [EmbedItem([2, 7, 3], [2, 8, 9, 3], [2, 5, 3]), EmbedItem([2, 3], [2, 4, 3], [])]
    batch = collate_embed(items, pad_id=0)
    assert set(batch) == {"anchor_input_ids", "anchor_attention_mask", "positive_input_ids", "positive_attention_mask"}
    assert batch["anchor_input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["positive_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert OBJECTIVE.length(items[0]) == 4 and OBJECTIVE.metric == "acc" and not OBJECTIVE.perplexity
    both = collate_embed([items[0], items[0]], pad_id=0)
    assert both["negative_input_ids"].tolist() == [[2, 5, 3], [2, 5, 3]]


def test_prepare_embed_pairs_reads_pairs_files_and_refuses_other_kinds(tmp_path: Path) -> None:
    import json

    from tunelab.config import load_config
    from tunelab.models.load import load_tokenizer
    from tunelab.objectives.embed.contrastive import prepare_embed_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(40))
    )
    tokenizer = load_tokenizer("minilm-l6")
    cfg = load_config(None, [f"data.train={pairs}", "model.source=minilm-l6", "data.max_length=32"])
    prepared = prepare_embed_pairs(prepare_args(cfg, tokenizer, tmp_path / "run"))
    assert len(prepared.train) + len(prepared.val) == 40 and prepared.train[0].negative == []
    assert (
        prepared.train[0].anchor[0] == tokenizer.cls_token_id and prepared.train[0].anchor[-1] == tokenizer.sep_token_id
    )
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"plain text row {i}"}) + "\n" for i in range(10)))
    with pytest.raises(DataError, match="pairs only"):
        prepare_embed_pairs(prepare_args(load_config(None, [f"data.train={text}"]), tokenizer, tmp_path / "run2"))


def test_contrastive_objective_trains_an_encoder_through_run_training(tmp_path: Path) -> None:
    import json

    from tunelab.config import load_config
    from tunelab.models.load import resolve_source
    from tunelab.recipes.run import run_training

    tokenizer = _word_tokenizer()
    folder = tmp_path / "bert"
    _tiny_bert(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert resolve_source(str(folder)).task == "encoder", "a bare BertModel folder loads as an encoder"
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"anchor": ex.anchor, "positive": ex.positive} for ex in _pairs(0) + _pairs(1)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"data.train={pairs}", f"model.source={folder}", "objective=contrastive", "objective.scale=20",
        "method=full", "training.learning_rate=5e-3", "training.batch_size=16", "training.epochs=3",
        "training.precision=fp32", "data.val_fraction=0.2", f"output.dir={tmp_path / 'runs'}", "output.name=emb",
    ])  # fmt: skip
    result = run_training(cfg)
    assert result.baseline is not None and "val_acc" in result.final and "val_ppl" not in result.final
    assert result.final["val_loss"] < 0.8 * result.baseline["val_loss"], (result.baseline, result.final)
    assert result.final["val_acc"] > result.baseline["val_acc"]
    saved = next(p for p in (result.run_dir).rglob("config.json") if (p.parent / "model.safetensors").is_file())
    assert resolve_source(str(saved.parent)).task == "encoder", "the trained encoder reloads as one"


def test_parity_with_sentence_transformers() -> None:
    """Our pooled vectors and InfoNCE equal sentence-transformers' on the embedded MiniLM (its own pipeline:
    Transformer -> mean Pooling -> Normalize, and MultipleNegativesRankingLoss)."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from tunelab.models.load import load_model, load_tokenizer, resolve_source

    reference = st.SentenceTransformer(str(resolve_source("minilm-l6").materialize()), device="cpu")
    texts = ["The storm flooded the low streets.", "a", "Invoice #4537, issued 3/2/1980 (day first), due soon"]
    ours = encode(load_model("minilm-l6"), load_tokenizer("minilm-l6"), texts)
    theirs = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(ours, theirs, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(4, 8, generator=g) for _ in range(3))
    mnrl = MultipleNegativesRankingLoss(reference, scale=5.0)
    assert info_nce(a, p, scale=5.0).item() == pytest.approx(mnrl.compute_loss_from_embeddings([a, p], None).item())
    with_negatives = mnrl.compute_loss_from_embeddings([a, p, n], None).item()
    assert info_nce(a, p, n, scale=5.0).item() == pytest.approx(with_negatives, rel=1e-5)
