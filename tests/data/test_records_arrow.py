"""Records to Arrow and back column by column, and chunks of raw rows sent to workers: each must equal the plain
per-row way it replaces."""

from __future__ import annotations

import pickle
import random
import re
import unicodedata

import pyarrow as pa

from tunelab.core.types import Message
from tunelab.data.dedup import near_form
from tunelab.data.ingest import SCHEMA, records_batch, records_examples
from tunelab.data.readers import RawRow, RawRows
from tunelab.data.records import Example


def _examples() -> list[Example]:
    rng = random.Random(0)
    out = []
    for i in range(40):
        turns = [Message("user", f"q{i} é\n"), Message("assistant", f"a{i}", trainable=bool(i % 3))]
        kind = ("chat", "text", "classification", "preference", "pairs")[i % 5]
        ex = Example(messages=turns[: rng.randint(0, 2)] if kind != "text" else [], origin=f"f.jsonl:{i}", kind=kind)
        ex.text, ex.label = ("t" * (i % 4), f"l{i}" if i % 2 else None)
        ex.chosen, ex.anchor, ex.negative = ("c" if i % 7 else ""), f"x{i}", ""
        ex.meta = {"difficulty": float(i), "augmented": "eda"} if i % 4 == 0 else {}
        ex.task, ex.synthetic = f"task{i % 3}", i % 6 == 0
        out.append(ex)
    return out


def test_records_batch_equals_the_batch_of_rows() -> None:
    examples = _examples()
    assert records_batch(examples).equals(pa.RecordBatch.from_pylist([e.to_row() for e in examples], schema=SCHEMA))
    assert records_batch([]).num_rows == 0


def test_records_examples_read_back_what_was_written_also_from_a_slice_over_chunks() -> None:
    examples = _examples()
    table = pa.Table.from_batches([records_batch(examples[:25]), records_batch(examples[25:])])
    assert records_examples(table) == examples
    part = table.slice(7, 30)  # across the two chunks, not starting at an offset of zero
    assert records_examples(part) == [Example.from_row(r) for r in part.to_pylist()] == examples[7:37]
    assert records_examples(table.slice(0, 0)) == []


def test_raw_rows_pickle_compactly_and_keep_every_field() -> None:
    rows = RawRows([
        RawRow(1, b'{"a": 1}', 8),
        RawRow(2, "", error="the file cannot be read from here on"),
        RawRow(3, {"text": "x"}, parsed=True, item=2),
        RawRow(4, "a line", 6, forced_format="text"),
        RawRow(5, b"x", 1),
    ])  # fmt: skip
    back = pickle.loads(pickle.dumps(rows))
    assert type(back) is RawRows and list(back) == list(rows)
    plain = [RawRow(k, b'{"a": %d}' % k, 8) for k in range(100)]
    assert len(pickle.dumps(RawRows(plain))) < len(pickle.dumps(plain)) / 2


def test_near_form_of_ascii_text_equals_the_expression() -> None:
    non_word = re.compile(r"[\W_]+")
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(128)] + ["é", "ß", "\u00a0", "Ⅻ"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        assert near_form(text) == non_word.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip(), repr(text)
