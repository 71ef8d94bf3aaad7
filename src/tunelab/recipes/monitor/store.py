"""The traffic log's database: what `tunelab serve --log DB` writes and what `monitor` (and retraining) read.

Three tables, SQLAlchemy Core so that one file (SQLite, the default) or one server that several `serve` processes
share (PostgreSQL, any SQLAlchemy URL) hold the same rows: every answered request (`tunelab_requests`), every piece
of feedback on one (`tunelab_feedback`: thumbs up/down, a corrected answer) and every preference between two
answers (`tunelab_preferences`: a client's choice among answers, or a blind rating on the review page). Feedback and
preference rows carry the prompt and answers they judge, so they stay usable even when the request row was never
written (a full queue) or has aged out of the log. Texts arrive here already masked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from tunelab.core.errors import ConfigError, DataError

METADATA = MetaData()
REQUESTS = Table(
    "tunelab_requests", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("response_id", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False, index=True),
    Column("server", String(200), nullable=False, default=""),
    Column("model", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("messages", Text, nullable=False),
    Column("answers", Text, nullable=False),
    Column("finish_reasons", Text, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency", Float, nullable=False),
)  # fmt: skip
FEEDBACK = Table(
    "tunelab_feedback", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("response_id", String(64), nullable=False, index=True),
    Column("created", Float, nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("messages", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("rating", Integer),
    Column("correction", Text),
)  # fmt: skip
PREFERENCES = Table(
    "tunelab_preferences", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created", Float, nullable=False, index=True),
    Column("source", String(32), nullable=False),
    Column("response_id", String(64)),
    Column("messages", Text, nullable=False),
    Column("chosen", Text, nullable=False),
    Column("rejected", Text, nullable=False),
    Column("chosen_model", String(200), nullable=False),
    Column("rejected_model", String(200), nullable=False),
)  # fmt: skip


R = TypeVar("R", bound="Row")


class Row:
    """A dataclass stored as one table row; its `JSON_FIELDS` are kept as JSON text."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("messages",)

    def row(self) -> dict[str, Any]:
        values = {**self.__dict__}
        for key in self.JSON_FIELDS:
            values[key] = json.dumps(values[key])
        return values

    @classmethod
    def from_row(cls: type[R], row: Any) -> R:
        values = dict(row._mapping)
        values.pop("id", None)
        for key in cls.JSON_FIELDS:
            values[key] = json.loads(values[key])
        return cls(**values)


@dataclass(frozen=True)
class LoggedRequest(Row):
    """One answered request as the log holds it. `prompt` is the text the model answered (a chat's last user
    turn, a completion's prompt); `messages` the whole conversation (or the list of prompts)."""

    response_id: str
    created: float
    model: str
    kind: str
    prompt: str
    messages: list[Any]
    answers: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    latency: float
    server: str = ""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("messages", "answers", "finish_reasons")


@dataclass(frozen=True)
class Feedback(Row):
    """A rating (+1 up, -1 down) and/or a corrected answer for one logged response."""

    response_id: str
    created: float
    model: str
    messages: list[Any]
    answer: str
    rating: int | None = None
    correction: str | None = None


@dataclass(frozen=True)
class Preference(Row):
    """`chosen` was preferred to `rejected` as the answer to `messages` (by a client, or blind on the review page)."""

    created: float
    source: str
    messages: list[Any]
    chosen: str
    rejected: str
    chosen_model: str
    rejected_model: str
    response_id: str | None = None


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL for `db`: a URL as given (postgresql+psycopg://...), a file path as SQLite."""
    text = str(db)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def open_database(db: str | Path, busy_timeout: float = 5.0) -> Engine:
    """An engine for the log database (nothing is connected yet). A URL SQLAlchemy cannot use is a ConfigError.
    `busy_timeout`: seconds a SQLite write waits for another writer's lock before failing."""
    url = database_url(db)
    try:
        parsed = make_url(url)
        args = {"timeout": busy_timeout} if parsed.get_backend_name() == "sqlite" else {"connect_timeout": 10}
        return create_engine(parsed, connect_args=args, pool_pre_ping=True)
    except ImportError as exc:  # the URL names a driver that is not installed
        raise ConfigError(
            f"--log '{safe_url(url)}' needs a database driver that is not installed ({exc}). For PostgreSQL: "
            "pip install 'psycopg[binary]'."
        ) from None
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(
            f"--log '{safe_url(url)}' is not a database tunelab can open ({exc}). Give a file path (SQLite) or a "
            "SQLAlchemy URL such as postgresql+psycopg://user@host:5432/db."
        ) from None


def safe_url(url: str) -> str:
    """`url` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def db_problem(exc: SQLAlchemyError) -> str:
    """The database's own words for a failure ("database is locked"), without SQLAlchemy's wrapping."""
    orig = getattr(exc, "orig", None)
    return str(orig) if orig is not None else str(exc).splitlines()[0]


def create_tables(engine: Engine) -> None:
    """Create the log's tables where missing (several servers may race to: a table made meanwhile is fine)."""
    try:
        METADATA.create_all(engine, checkfirst=True)
    except SQLAlchemyError:
        METADATA.create_all(engine, checkfirst=True)  # another server created them between check and create


def write_requests(conn: Connection, rows: list[LoggedRequest]) -> None:
    if rows:
        conn.execute(insert(REQUESTS), [r.row() for r in rows])


def write_feedback(conn: Connection, rows: list[Feedback]) -> None:
    if rows:
        conn.execute(insert(FEEDBACK), [r.row() for r in rows])


def write_preferences(conn: Connection, rows: list[Preference]) -> None:
    if rows:
        conn.execute(insert(PREFERENCES), [r.row() for r in rows])


def prune(conn: Connection, max_rows: int | None, max_age: float | None, now: float | None = None) -> int:
    """Apply the retention limits to the request log: rows older than `max_age` seconds, then all but the newest
    `max_rows`, are deleted. Returns how many went."""
    removed = 0
    if max_age is not None:
        cutoff = (now if now is not None else time.time()) - max_age
        removed += conn.execute(delete(REQUESTS).where(REQUESTS.c.created < cutoff)).rowcount or 0
    if max_rows is not None:
        keep_from = conn.execute(
            select(REQUESTS.c.id).order_by(REQUESTS.c.id.desc()).offset(max_rows).limit(1)
        ).scalar()  # the newest row past the limit: it and every older row go
        if keep_from is not None:
            removed += conn.execute(delete(REQUESTS).where(REQUESTS.c.id <= keep_from)).rowcount or 0
    return removed


def find_request(engine: Engine, response_id: str) -> LoggedRequest | None:
    with engine.connect() as conn:
        row = conn.execute(select(REQUESTS).where(REQUESTS.c.response_id == response_id)).first()
    return LoggedRequest.from_row(row) if row is not None else None


def recent_requests(engine: Engine, limit: int, kind: str | None = None) -> list[LoggedRequest]:
    """The newest `limit` logged requests (of `kind` when given), newest first."""
    query = select(REQUESTS).order_by(REQUESTS.c.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(REQUESTS.c.kind == kind)
    with engine.connect() as conn:
        return [LoggedRequest.from_row(r) for r in conn.execute(query)]


@dataclass
class LogContents:
    """Everything of the log between two times, for the monitor."""

    requests: list[LoggedRequest]
    feedback: list[Feedback]
    preferences: list[Preference]


def read_log(db: str | Path, since: float | None = None, until: float | None = None) -> LogContents:
    """The log's rows created in [since, until), oldest first. A missing, unreadable or foreign database is a
    DataError that says which and why."""
    url = database_url(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise DataError(f"The traffic log '{db}' does not exist. Give the --log DB that `tunelab serve --log` wrote.")
    engine = open_database(url)
    try:
        with engine.connect() as conn:
            return LogContents(
                [LoggedRequest.from_row(r) for r in conn.execute(_between(REQUESTS, since, until))],
                [Feedback.from_row(r) for r in conn.execute(_between(FEEDBACK, since, until))],
                [Preference.from_row(r) for r in conn.execute(_between(PREFERENCES, since, until))],
            )
    except SQLAlchemyError as exc:
        raise DataError(
            f"Cannot read the traffic log '{safe_url(url)}': {db_problem(exc)}. Check that it is the database "
            "`tunelab serve --log` writes (a locked SQLite file frees itself once its writer finishes; a corrupt "
            "one must be replaced), and that the server is reachable."
        ) from None
    finally:
        engine.dispose()


def _between(table: Table, since: float | None, until: float | None) -> Any:
    query = select(table).order_by(table.c.created, table.c.id)
    if since is not None:
        query = query.where(table.c.created >= since)
    if until is not None:
        query = query.where(table.c.created < until)
    return query


def count_requests(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(REQUESTS)).scalar() or 0)
