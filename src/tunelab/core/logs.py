"""Library loggers turned down for a block: the libraries tunelab drives log, at INFO or WARNING, things that are
expected here (a database's schema migrations, a model passed as an object on purpose)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def loggers_at(level: int, *names: str) -> Iterator[None]:
    """The named loggers at `level` (e.g. `logging.WARNING`) inside the block, and as they were after it."""
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, old in before.items():
            logging.getLogger(name).setLevel(old)
