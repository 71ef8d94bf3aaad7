"""Chat rows tokenised in pieces (a shape's literals once, contents per row) give the whole text's ids and labels,
and a seam the tokenizer does not split is found on trial and never trusted."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.data.token_pieces import TRUST_AFTER, edge_class
from tunelab.data.tokenize import ChatCache, tokenize_example, tokenize_records
from tunelab.models.load import CHATML_TEMPLATE

# The role name runs straight into the content: "userhello" is one word to the pre-tokenizer, so a content that
# starts with a letter does not split from its literal, while one that starts with a space does.
GLUED = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant' }}{% endif %}"
)


def _chat(i: int, question: str, answer: str) -> Example:
    return Example(kind="chat", messages=[Message("user", question), Message("assistant", answer)], origin=f"r:{i}")


def _check(tok, rows: list[Example], cache: ChatCache) -> None:
    got = tokenize_records(rows, tok, 4096, cache=cache)
    for row, out in zip(rows, got, strict=True):
        want = tokenize_example(row, tok, 4096)
        chat = [{"role": m.role, "content": m.content} for m in row.messages]
        assert not isinstance(out, ValueError), out
        assert (
            out[0].input_ids == want.input_ids == list(tok.apply_chat_template(chat, tokenize=True, return_dict=False))
        ), row.origin
        assert out[0].labels == want.labels, row.origin


def test_trusted_seams_take_the_pieces_and_match(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHATML_TEMPLATE
    rows = [_chat(i, f"Question {i}: how far is it?", f"About {i} km, more or less.") for i in range(40)]
    cache = ChatCache.of(tok)
    _check(tok, rows, cache)
    (pieces,) = cache.pieces._pieces.values()
    # Every seam of these rows was tried on TRUST_AFTER rows and agreed; later rows take the pieces alone.
    assert pieces.trust and all(n == TRUST_AFTER for n in pieces.trust.values())
    _check(tok, [_chat(i, f"Another {i}?", f"Yes {i}.") for i in range(10)], cache)


def _glued_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE that learnt "userhello" as one token, with ChatML's special tokens and the GLUED template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["userhello assistantsure there thing 0123456789"] * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = GLUED
    return fast


def test_a_seam_that_does_not_split_is_never_trusted() -> None:
    tok = _glued_tokenizer()
    assert len(tok("userhello", add_special_tokens=False)["input_ids"]) == 1
    glued = [_chat(i, f"hello there {i}", f"sure thing {i}") for i in range(12)]
    spaced = [_chat(i, f" hello there {i}", f" sure thing {i}") for i in range(12, 24)]
    cache = ChatCache.of(tok)
    _check(tok, glued + spaced, cache)
    (pieces,) = cache.pieces._pieces.values()
    assert pieces.trust[(0, 0, edge_class("hello", start=True))] == -1  # "user" + "hello": one pre-token
    assert pieces.trust[(0, 0, edge_class(" hello", start=True))] == TRUST_AFTER
    _check(tok, glued + spaced, cache)  # the untrusted rows keep being tokenised whole, and right


def test_edge_classes_spell_out_whitespace_runs() -> None:
    assert edge_class("Hello", start=True) == edge_class("World", start=True) == "|Lu"
    assert edge_class(" a", start=True) != edge_class(" \na", start=True)  # "\n " + "\n" would merge differently
    assert edge_class("ends.", start=False) == "|Po" and edge_class("it's", start=True) == "|Ll"
    assert edge_class("'s", start=True) == "|'" and edge_class("", start=True) == ""
    assert edge_class(" " * 20 + "x", start=True) == "long|Ll"
