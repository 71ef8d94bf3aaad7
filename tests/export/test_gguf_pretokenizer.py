"""GGUF pre-tokenizer metadata: a name llama.cpp loads, decided as llama.cpp's converter decides it.

llama.cpp refuses a BPE file whose `tokenizer.ggml.pre` it does not know. The names it knows, the converter's hash
table and its check text are vendored from llama-cpp-python 0.3.36's llama.cpp (llama_cpp_pretokenizers.json);
benchmarks/generate_speed.py loads the exports in a real llama.cpp build.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.tiny import corpus
from tunelab.export.errors import ExportError
from tunelab.export.gguf import verify_gguf, write_gguf
from tunelab.export.gguf_vocab import (
    check_hash,
    decide_pre_tokenizer,
    llama_cpp_split,
    pretokenizer_table,
    write_vocabulary,
)
from tunelab.models.load import resolve_source

TEXTS = [
    "what is color of cat 123",
    "I've been 'told he's there, 'RE you sure?  \n\n  x",
    "3.14159 and 2025-01-31, costs $12,000!!",
    "tabs\tand   spaces   \n trailing   ",
    "ünïcödé 東京 мир 🦙🦙",
]


def _trained(pre: pre_tokenizers.PreTokenizer, normalizer: normalizers.Normalizer | None = None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*corpus(), "12 345 6789"], trainer=trainer)
    return tok


def _fast(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _written_pre(tokenizer: PreTrainedTokenizerFast, path: Path) -> object:
    """The `tokenizer.ggml.pre` value the export's vocabulary writer puts into a GGUF writer for `tokenizer`."""
    writer = gguf.GGUFWriter(path, arch="llama")
    write_vocabulary(writer, tokenizer, len(tokenizer))
    return writer.kv_data[0]["tokenizer.ggml.pre"].value


def test_the_vendored_table_is_llama_cpps() -> None:
    table = pretokenizer_table()
    assert "llama-cpp-python 0.3.36" in table["source"]
    assert table["check_text"].startswith("\n \n\n \n\n\n \t \t\t \t\n") and table["check_text"].endswith("a'lL")
    assert len(table["hashes"]) > 90 and {"gpt-2", "smollm", "llama-bpe"} <= set(table["known"])
    by_name = {name: h for h, name in table["hashes"].items()}
    assert by_name["smollm"] == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"


def test_tiny_export_names_gpt2_which_llama_cpp_knows(tiny_model_dir: Path, tmp_path: Path) -> None:
    meta = verify_gguf(write_gguf(tiny_model_dir, tmp_path / "tiny.gguf", "f32")).metadata
    assert meta["tokenizer.ggml.pre"] in pretokenizer_table()["known"]
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    # The converter's table does not hold this freshly trained vocabulary (it would stop here) ...
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert check_hash(tokenizer) not in pretokenizer_table()["hashes"]
    # ... so the name comes from the split, which is llama.cpp's gpt-2 split on any text, not only the check text.
    gpt2 = pretokenizer_table()["splits"]["gpt-2"]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for text in TEXTS:
        own = [p for p, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
        assert own == [byte_level.pre_tokenize_str(p)[0][0] for p in llama_cpp_split(text, gpt2)], text


def test_embedded_smollm2_is_smollm_by_the_converters_hash(tmp_path: Path) -> None:
    # The shipped SmolLM2 GGUF itself says 'smollm'; reading its 49k-token vocabulary back costs ~5 s on 2 cores,
    # so the tokenizer is read once, the way tunelab reads the embedded model.
    path = resolve_source("smollm2-135m").path
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert pretokenizer_table()["hashes"][check_hash(tokenizer)] == "smollm"
    assert _written_pre(tokenizer, tmp_path / "vocab.gguf") == "smollm"


def test_llama_cpp_split_isolates_digits_for_smollm() -> None:
    smollm, gpt2 = pretokenizer_table()["splits"]["smollm"], pretokenizer_table()["splits"]["gpt-2"]
    assert llama_cpp_split("ab 123", smollm) == ["ab", " ", "1", "2", "3"]
    assert llama_cpp_split("ab 123", gpt2) == ["ab", " 123"]
    assert llama_cpp_split("I'll  go", gpt2) == ["I", "'ll", " ", " go"]


def test_an_unknown_vocabulary_that_splits_digits_one_by_one_is_smollm() -> None:
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert decide_pre_tokenizer(_fast(_trained(pre))) == "smollm"


@pytest.mark.parametrize(
    ("pre", "normalizer"),
    [
        (pre_tokenizers.ByteLevel(add_prefix_space=True), None),  # splits like no llama.cpp pre-tokenizer
        (pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFKC()),  # llama.cpp would not normalise
    ],
)
def test_an_unknown_vocabulary_that_splits_otherwise_is_refused(pre, normalizer) -> None:
    tokenizer = _fast(_trained(pre, normalizer))
    with pytest.raises(ExportError, match=rf"check hash {check_hash(tokenizer)} .*--format hf"):
        decide_pre_tokenizer(tokenizer)


def test_a_sentencepiece_style_vocabulary_is_refused(tmp_path: Path) -> None:
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(vocab_size=120))
    with pytest.raises(ExportError, match="SentencePiece-style BPE"):
        write_vocabulary(gguf.GGUFWriter(tmp_path / "x.gguf", arch="llama"), _fast(tok), 120)
