"""The README's support matrix, generated from the matrix tests (tests/models/test_families.py).

`python -m tests.support_matrix` runs those tests, refuses to write anything if a cell's test fails, and
otherwise writes the table, rendered from the family table (src/tunelab/models/families.py), between the README's
markers. tests/models/test_families_readme.py checks that the README holds what `render()` gives, so the table
cannot drift from the declared cells, and the cells cannot drift from what the tests check.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from tunelab.models.families import CELLS, FAMILIES, PARTS, Cell, Family

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TESTS = "tests/models/test_families.py"
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"
CELL_TESTS: dict[Cell, str] = {
    "lora": "test_lora_training",
    "full": "test_full_training",
    "fast_path": "test_fast_path",
    "chat_template": "test_chat_template",
    "merge": "test_merge",
    "peft_export": "test_peft_export",
    "gguf": "test_gguf_export",
    "serve": "test_serve",
}
"""Each cell kind and the test, parametrised by `model_type`, that checks it."""
_SHORT: dict[str, str] = {"norm": "norm", "mlp": "MLP", "attention": "attention"}


def _cell(family: Family, cell: Cell, notes: list[str]) -> str:
    """One table cell: a check mark, the fast-path parts used, or 'no' with a numbered note giving the reason."""
    reason = family.fast_path_gaps if cell == "fast_path" else family.reason(cell)
    text = "✓"
    if cell == "fast_path":
        text = ", ".join(_SHORT[p] for p in family.fast_path) or "no"
    elif reason:
        text = "no"
    if not reason:
        return text
    if reason not in notes:
        notes.append(reason)
    return f"{text} ({notes.index(reason) + 1})"


def render() -> str:
    """The matrix as Markdown: a row per family, a column per cell kind, reasons as numbered notes below."""
    notes: list[str] = []
    header = ["family", "kind", *CELLS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family in FAMILIES.values():
        cells = [_cell(family, cell, notes) for cell in CELLS]
        lines.append("| " + " | ".join([family.name, family.kind, *cells]) + " |")
    lines.append("")
    lines += [f"{i}. {note}." for i, note in enumerate(notes, 1)]
    parts = ", ".join(f"{_SHORT[p]} = {name}" for p, name in PARTS.items())
    lines += ["", f"Fast-path parts: {parts}."]
    return "\n".join(lines)


def readme_section(text: str) -> str:
    """What the README holds between the markers."""
    return text[text.index(START) + len(START) : text.index(END)].strip("\n")


def failed_cells(junit: Path) -> list[str]:
    """The matrix cells whose test did not pass (or did not run), from a pytest JUnit XML report."""
    passed = set()
    for case in ET.parse(junit).getroot().iter("testcase"):
        if not any(child.tag in ("failure", "error", "skipped") for child in case):
            passed.add(case.get("name", ""))
    wanted = [f"{test}[{model_type}]" for test in CELL_TESTS.values() for model_type in FAMILIES]
    return [name for name in wanted if name not in passed]


def main() -> int:
    """Run the matrix tests and, when every cell passes, write the table into the README."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "matrix.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", TESTS, f"--junitxml={junit}"], cwd=ROOT, check=False)
        failed = failed_cells(junit)
    if failed:
        print(f"README left as it was: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    text = README.read_text()
    head, tail = text[: text.index(START) + len(START)], text[text.index(END) :]
    README.write_text(f"{head}\n{render()}\n{tail}")
    print(f"README support matrix written: {len(FAMILIES)} families x {len(CELLS)} cells, all checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
