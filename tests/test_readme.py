"""The README's layout section names the package as it is: every entry exists, and every package and sub-package
of src/tunelab is named in it."""

from __future__ import annotations

import re

from tests.helpers import ROOT

SRC = ROOT / "src" / "tunelab"


def layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout") :]
    return section.split("```")[1].splitlines()


def test_layout_entries_exist_and_name_every_package() -> None:
    lines = [line for line in layout_block() if line.startswith("  ")]
    entries = [re.match(r"\s+(\S+)", line).group(1) for line in lines if not line.startswith("                ")]
    for entry in entries:
        assert (SRC / entry.rstrip("/")).exists(), f"README layout names {entry}, which src/tunelab does not have"
    top = sorted(p.name + "/" for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert sorted(e for e in entries if e.endswith("/")) == top
    text = "\n".join(lines)
    for package in SRC.rglob("__init__.py"):
        sub = package.parent.relative_to(SRC)
        if len(sub.parts) > 1:
            assert f"{sub.name}/" in text, f"README layout does not name the package {sub}"
