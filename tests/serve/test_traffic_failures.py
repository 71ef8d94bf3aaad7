"""The traffic log when its database misbehaves: a locked database drops (and counts) what the queue cannot hold
while answers stay fast, a corrupt file fails every write (counted, logged once) and serving goes on, retention
limits delete the oldest rows, and the same log works on a real PostgreSQL server."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import torch
from sqlalchemy import create_engine, event

from tunelab.cli.args import build_parser
from tunelab.cli.main import main
from tunelab.cli.serve import log_settings
from tunelab.recipes.monitor.store import (
    LoggedRequest,
    count_requests,
    create_tables,
    prune,
    read_log,
    write_requests,
)
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import RunningServer, build_state, serve_in_thread
from tunelab.serve.traffic import LogSettings, TrafficLog


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    running = serve_in_thread(build_state(str(tiny_model_dir), ServeConfig(), dtype=torch.float32, name="tiny"))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def use_log(server: RunningServer, settings: LogSettings) -> TrafficLog:
    log = TrafficLog(settings, server.state.metrics).start()
    server.state.traffic = log
    return log


def ask(server: RunningServer, text: str = "hello") -> float:
    started = time.perf_counter()
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    return time.perf_counter() - started


def metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.search(rf"^{name}_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def settle(log: TrafficLog, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while log.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)


def test_locked_database_drops_and_counts_without_slowing_answers(server: RunningServer, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    log = use_log(server, LogSettings(db=str(db), queue_size=2, busy_timeout=5))
    ask(server)
    settle(log)
    fast = ask(server)
    dropped_before = metric(server, "tunelab_traffic_log_dropped")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: every write waits 5 s, then fails
    try:
        times = [ask(server, f"question {i}") for i in range(8)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert max(times) < fast + 3.0  # no answer waited for the database (that takes its 5 s busy timeout)
    assert metric(server, "tunelab_traffic_log_dropped") - dropped_before >= 4  # queue of 2, writer stuck
    settle(log)
    ask(server, "after the lock")
    settle(log)
    logged = [r.prompt for r in read_log(db).requests]
    assert "after the lock" in logged and len(logged) < 10
    log.close()


def test_corrupt_database_fails_writes_and_serving_goes_on(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not a database file" * 100)
    failed_before = metric(server, "tunelab_traffic_log_failed")
    with caplog.at_level(logging.ERROR, logger="tunelab.serve"):
        log = use_log(server, LogSettings(db=str(db)))
        for i in range(3):
            ask(server, f"q{i}")
            settle(log)
    assert metric(server, "tunelab_traffic_log_failed") - failed_before == 3
    problems = [r.getMessage() for r in caplog.records if "traffic log" in r.getMessage()]
    assert len(problems) == 1 and "not a database" in problems[0]  # logged once, with the database's words
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    with pytest.raises(Exception, match="not a database"):
        read_log(db)
    log.close()


def test_full_database_fails_writes_and_serving_goes_on(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "full.db"
    small = sqlite3.connect(db)
    small.execute("PRAGMA page_size = 512")  # a row of the prompt below needs a page more than the tables have
    small.execute("VACUUM")
    small.close()
    create_tables(create_engine(f"sqlite:///{db}"))
    log = TrafficLog(LogSettings(db=str(db)), server.state.metrics)
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    # SQLite's own size limit, on every connection the log opens: the file cannot grow by a page.
    event.listen(log.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA max_page_count = {pages}"))
    server.state.traffic = log.start()
    failed_before = metric(server, "tunelab_traffic_log_failed")
    with caplog.at_level(logging.ERROR, logger="tunelab.serve"):
        for i in range(3):
            ask(server, f"question {i}: " + "how are the cats and dogs " * 12)
            settle(log)
    assert metric(server, "tunelab_traffic_log_failed") - failed_before == 3
    problems = [r.getMessage() for r in caplog.records if "traffic log" in r.getMessage()]
    assert len(problems) == 1 and "full" in problems[0]
    log.close()


def row(i: int, created: float) -> LoggedRequest:
    return LoggedRequest(f"chatcmpl-{i}", created, "m", "chat", f"p{i}", [], ["a"], ["stop"], 3, 1, 0.1)


def test_retention_keeps_the_newest_rows_within_the_age(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    create_tables(engine)
    now = 1_000_000.0
    with engine.begin() as conn:
        write_requests(conn, [row(i, now - 100 + i * 10) for i in range(10)])  # ages 100, 90, ..., 10 s
        assert prune(conn, max_rows=None, max_age=45, now=now) == 6  # ages 100..50 go
        assert prune(conn, max_rows=3, max_age=None, now=now) == 1
    assert count_requests(engine) == 3
    assert [r.prompt for r in read_log(tmp_path / "r.db").requests] == ["p7", "p8", "p9"]


def test_log_on_postgresql(server: RunningServer, postgres: str) -> None:
    log = use_log(server, LogSettings(db=postgres, server="pg-1"))
    ask(server, "mail me at x@y.com")
    settle(log)
    logged = read_log(postgres).requests
    assert [(r.prompt, r.server, r.model) for r in logged] == [("mail me at [EMAIL]", "pg-1", "tiny")]
    log.close()
    restarted = use_log(server, LogSettings(db=postgres, server="pg-2"))  # nothing in memory: found in the database
    assert restarted.lookup(logged[0].response_id) == logged[0] and restarted.lookup("chatcmpl-none") is None
    restarted.close()


def test_log_flags_are_checked_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing_model = str(tmp_path / "no-such-model")  # never reached: the flags fail first
    for flags in (["--log-mask", "emial"], ["--log-max-age", "soon"], ["--log-queue", "0"]):
        assert main(["serve", missing_model, "--log", str(tmp_path / "l.db"), *flags]) == 2
        assert f"error: {flags[0]}" in capsys.readouterr().err
    assert main(["serve", missing_model, "--log", "nosuchdb://host/x"]) == 2
    assert "--log 'nosuchdb://host/x' is not a database" in capsys.readouterr().err


def test_log_flags_map_onto_settings() -> None:
    args = build_parser().parse_args(["serve", "m", "--log", "t.db", "--log-mask", "email, ip", "--log-max-age",
                                      "2h", "--log-max-rows", "5", "--port", "9000"])  # fmt: skip
    assert log_settings(args) == LogSettings(db="t.db", mask=("email", "ip"), max_rows=5, max_age=7200.0,
                                             server="127.0.0.1:9000")  # fmt: skip
    none = log_settings(build_parser().parse_args(["serve", "m", "--log", "t.db", "--log-mask", "none"]))
    assert none is not None and none.mask == ()
    assert log_settings(build_parser().parse_args(["serve", "m"])) is None
