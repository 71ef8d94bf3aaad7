"""Chat rows tokenised in pieces (a shape's literals once, contents per row) give the whole text's ids and labels,
and a seam the tokenizer does not split is found on trial and never trusted."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.data.token_pieces import TRUST_AFTER, ContentTokenizer, edge_class
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


LLAMA3_SPLIT = (  # Llama 3's and Qwen2's pre-tokenizer pattern
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEXTS = [
    "Hello world, it's 2024!", "  leading and trailing  ", "tabs\tand\nnew\n\nlines\r\n", "numbers 1234567 3.14",
    "東京 は 🦙 llama", "don't WE'LL they've", "a  b   c", "x" * 40, "", "mixed123abc", "<b>&amp;</b> {{x}}",
    "ending with space ", "\n\nstarts with newlines", "emoji 🦙🦙 and accents café naïve", "٣٤ and ½ 12ab34 5",
]  # fmt: skip


def _bpe(pre: pre_tokenizers.PreTokenizer) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|special|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    return tok


@pytest.mark.parametrize(
    "pre",
    [
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
        pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
    ],
    ids=["gpt2", "llama3", "digits", "digit-runs"],
)
def test_word_path_equals_the_library(pre) -> None:
    backend = _bpe(pre)
    contents = ContentTokenizer(backend)
    assert contents.by_words
    texts = TEXTS * 3 + [t + " <|special|> after" for t in TEXTS[:3]]  # an added token's text: the library's path
    got = contents.ids(texts)
    assert got == [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert contents.by_words  # no check disagreed


def test_pipelines_the_word_path_cannot_follow_use_the_library() -> None:
    prefix = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=True))
    metaspace = _bpe(pre_tokenizers.Metaspace())
    normalised = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    normalised.normalizer = normalizers.NFKC()
    for backend in (prefix, metaspace, normalised):
        contents = ContentTokenizer(backend)
        assert not contents.by_words
        assert contents.ids(TEXTS) == [e.ids for e in backend.encode_batch(TEXTS, add_special_tokens=False)]


def test_a_disagreeing_check_turns_the_word_path_off() -> None:
    backend = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    contents = ContentTokenizer(backend)
    contents.words["Hello"] = [0]  # a wrong memory, as a pre-tokenizer this module misread would give
    got = contents.ids(TEXTS)
    assert not contents.by_words
    assert got == [e.ids for e in backend.encode_batch(TEXTS, add_special_tokens=False)]
