"""Join the technique demos' sections (benchmarks/results/techniques_<demo>.md) into
benchmarks/results/techniques.md, in the order of the training flow, with a short introduction.

    .venv/bin/python benchmarks/techniques_report.py
"""

from __future__ import annotations

from techniques_common import RESULTS

OUT = RESULTS / "techniques.md"
ORDER = [
    "pretrain", "continual", "multitask", "fewshot", "distill", "alignment", "adversarial", "merge", "embeddings", "rag"
]  # fmt: skip
"""Sections in the order of a model's life (adapt to a domain, learn tasks, compress, align, harden, combine,
retrieve), then any other `techniques_*.md` by name."""

INTRO = """# Training techniques on the embedded models: measured demos

Each section below was written by one script in `benchmarks/` (`techniques_<demo>.py`) from a real run; its exact
command is in the section, and the raw numbers (with arguments, machine and wall times) are in
`benchmarks/results/techniques_<demo>.json`. Each section states its model (the embedded SmolLM2-135M-Instruct or
all-MiniLM-L6-v2), data and budget. Most use examples/dates: rewrite a date found in a sentence as YYYY-MM-DD and
nothing else, scored on held-out test prompts whose dates never occur in training. Budgets are small (tens of
steps) because every demo had to finish in minutes on one thread of a shared 2-core CPU: the numbers show the
direction and rough size of each effect, not what longer training would reach. The loss maths itself is checked
against hand-computed numbers and reference implementations in the test suite.

Rerun a demo, then this script, to refresh: `.venv/bin/python benchmarks/techniques_report.py`.
"""


def sections() -> list[str]:
    """The demos' sections present in benchmarks/results, in report order."""
    found = {p.stem.removeprefix("techniques_"): p for p in RESULTS.glob("techniques_*.md")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return [found[n].read_text().strip() + "\n" for n in names]


def main() -> None:
    parts = sections()
    missing = [n for n in ORDER if not (RESULTS / f"techniques_{n}.md").is_file()]
    text = INTRO
    if missing:
        runs = ", ".join(f"`benchmarks/techniques_{n}.py`" for n in missing)
        text += f"\nNot run yet: {runs}.\n"
    OUT.write_text("\n".join([text, *parts]))
    print(f"{OUT}: {len(parts)} sections")


if __name__ == "__main__":
    main()
