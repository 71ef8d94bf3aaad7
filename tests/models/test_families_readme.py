"""The README's support matrix is the one the family table declares, and each declared cell has its test."""

from __future__ import annotations

import inspect

from tests.models import test_families
from tests.support_matrix import CELL_TESTS, README, readme_section, render
from tunelab.models.families import CELLS, FAMILIES


def test_readme_matrix_is_the_declared_one() -> None:
    assert readme_section(README.read_text()) == render(), "run `python -m tests.support_matrix` to regenerate it"


def test_every_cell_kind_has_a_test_parametrised_over_every_family() -> None:
    assert set(CELL_TESTS) == set(CELLS)
    for test in CELL_TESTS.values():
        function = getattr(test_families, test)
        marks = [m for m in function.pytestmark if m.name == "parametrize"]
        assert marks and list(marks[0].args[1]) == list(FAMILIES), test
        assert "model_type" in inspect.signature(function).parameters


def test_rendered_cells_give_the_reasons() -> None:
    table = render()
    assert table.count("\n| ") == len(FAMILIES)
    for family in FAMILIES.values():
        for reason in [*family.limits.values(), family.fast_path_gaps]:
            assert not reason or f". {reason}." in table
