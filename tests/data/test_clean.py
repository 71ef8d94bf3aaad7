"""Normalisation, PII masking and noise filters, on hand-written texts with known answers."""

from __future__ import annotations

from collections import Counter

from tunelab.core.types import Message
from tunelab.data.clean import Cleaner, CleanStats, mask_pii, non_letter_ratio, normalise, repeated_ngram_ratio
from tunelab.data.config import CleanSection
from tunelab.data.records import Example, Removed


def chat(answer: str, question: str = "a question") -> Example:
    return Example([Message("user", question), Message("assistant", answer)], "f:1")


def test_normalise_unicode_whitespace_controls_html() -> None:
    assert normalise("ﬁne  ｆｕｌｌ\u200b\x07 x²\r\n\r\n\r\n\r\nend  \n") == "fine  full x2\n\nend"
    assert normalise("x²", unicode_form="NFC") == "x²"
    assert normalise("    indented\n  code", whitespace=True) == "indented\n  code"  # inner indentation stays
    html = "<p>Hello&nbsp;<b>world</b></p><script>alert(1)</script><br>a < b"
    assert normalise(html, strip_html=True) == "Hello world\n\na < b"


def test_pii_masking_counts_each_kind() -> None:
    counts: Counter[str] = Counter()
    text = "Mail jo.doe+x@mail.example.org or call +1 (555) 123-4567, server 192.168.0.1, v1.2.3 on 2024-01-15."
    masked = mask_pii(text, ["email", "phone", "ip"], counts)
    assert masked == "Mail [EMAIL] or call [PHONE], server [IP], v1.2.3 on 2024-01-15."
    assert dict(counts) == {"email": 1, "phone": 1, "ip": 1}
    assert mask_pii("call 555 123 4567", ["email"]) == "call 555 123 4567"


def test_ratios() -> None:
    assert repeated_ngram_ratio("la la la la la la") == 1 - 1 / 4
    assert repeated_ngram_ratio("one two three four") == 0.0
    assert non_letter_ratio("ab12") == 0.5


def test_each_filter_names_itself() -> None:
    cfg = CleanSection(min_chars=5, max_chars=200, max_repeated_ngram_ratio=0.5, max_non_letter_ratio=0.5,
                       drop_trivial_answers=True, min_answer_chars=2)  # fmt: skip
    cleaner, stats = Cleaner(cfg), CleanStats()
    cases = {
        "length_chars": chat("ok", "q"),
        "trivial_answer": chat("N/A"),
        "repeated_ngrams": chat("spam spam spam spam spam spam spam spam"),
        "non_letter": chat("1234567890 == 0987654321 ??"),
    }
    for name, example in cases.items():
        result = cleaner.clean(example, stats)
        assert isinstance(result, Removed) and result.filter == name, (name, result)
    assert isinstance(cleaner.clean(chat("A proper answer with words."), stats), Example)
    assert dict(stats.removed) == {name: 1 for name in cases}


def test_normalisation_that_empties_an_answer_removes_the_record() -> None:
    stats = CleanStats()
    result = Cleaner(CleanSection()).clean(chat("\u200b\u200b"), stats)
    assert isinstance(result, Removed) and result.filter == "normalize" and "messages[1]" in result.reason
