"""`tunelab models`: the embedded models, usable as `model.source`."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from tunelab.models.registry import EMBEDDED

console = Console()


def models(args: argparse.Namespace) -> None:
    table = Table(title="Embedded models (use as model.source)")
    for column in ("name", "kind", "package", "description"):
        table.add_column(column)
    for m in EMBEDDED.values():
        table.add_row(m.name, m.kind, m.package.replace("_", "-"), m.description)
    console.print(table)
