"""The traffic log, feedback and the review page on a live server (tiny model, API key, SQLite log)."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from tests.serve.test_openai import make_adapter
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, serve_in_thread
from tunelab.serve.traffic import LogSettings

KEY = "sk-traffic"
AUTH = {"Authorization": f"Bearer {KEY}"}
BASE, ADAPTER = "base-xq", "adapter-zk"
PII = "mail jane.doe@example.com or call +1 (555) 123-4567 from 10.0.0.12"


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("traffic")
    adapter = make_adapter(tiny_model_dir, tmp / "adapter", seed=7)
    db = tmp / "log.db"
    state = build_state(
        str(tiny_model_dir), ServeConfig(api_keys=[KEY]), dtype=torch.float32, name=BASE, adapters={ADAPTER: adapter},
        log=LogSettings(db=str(db), server="test-1"),
    )  # fmt: skip
    running = serve_in_thread(state)
    yield running, db
    running.stop()
    torch.set_num_threads(threads)


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def wait_for_row(db: Path, response_id: str) -> sqlite3.Row:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if db.is_file():
            try:
                found = rows(db, f"select * from tunelab_requests where response_id = '{response_id}'")
            except sqlite3.OperationalError:  # the table is being created
                found = []
            if found:
                return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{response_id} was never logged")


def chat(url: str, content: str, **extra) -> dict:
    body = {"model": BASE, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_answers_are_logged_with_personal_data_masked(served) -> None:
    server, db = served
    reply = chat(server.url, PII, temperature=0)
    row = wait_for_row(db, reply["id"])
    assert row["prompt"] == "mail [EMAIL] or call [PHONE] from [IP]"
    assert "jane" not in row["messages"] and "555" not in row["messages"]
    assert row["model"] == BASE and row["kind"] == "chat" and row["server"] == "test-1"
    assert json.loads(row["answers"]) == [reply["choices"][0]["message"]["content"]]
    assert row["prompt_tokens"] == reply["usage"]["prompt_tokens"]
    assert row["completion_tokens"] == reply["usage"]["completion_tokens"]
    assert row["finish_reasons"] == f'["{reply["choices"][0]["finish_reason"]}"]' and row["latency"] > 0

    streamed = httpx.post(
        f"{server.url}/v1/completions", headers=AUTH, timeout=60,
        json={"model": ADAPTER, "prompt": "write to a@b.org", "max_tokens": 3, "stream": True},
    )  # fmt: skip
    ids = set(re.findall(r'"id": "(cmpl-[0-9a-f]+)"', streamed.text))
    assert len(ids) == 1  # every chunk carries the one id feedback names
    row = wait_for_row(db, ids.pop())
    assert row["kind"] == "text" and row["model"] == ADAPTER and row["prompt"] == "write to [EMAIL]"
    assert row["completion_tokens"] >= 1


def test_feedback_is_stored_and_checked(served) -> None:
    server, db = served
    first = chat(server.url, "colour of the sky?", n=2, temperature=1.0, seed=3)
    second = chat(server.url, "colour of the sky?", temperature=0)
    post = lambda body, **kw: httpx.post(f"{server.url}/v1/feedback", json=body, timeout=30, **kw)  # noqa: E731

    answers = [c["message"]["content"] for c in first["choices"]]
    ok = post({"response_id": first["id"], "rating": "down", "correction": "Blue, call 555-123-4567"}, headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert ok.json()["rating"] == "down" and ok.json()["correction"] is True
    assert post({"response_id": second["id"], "rating": "up"}, headers=AUTH).status_code == 200
    chose = post({"response_id": first["id"], "choice": 2, "compared_to": second["id"]}, headers=AUTH)
    assert chose.status_code == 200, chose.text

    stored = rows(db, "select * from tunelab_feedback order by id")
    assert [(r["response_id"], r["rating"]) for r in stored] == [(first["id"], -1), (second["id"], 1)]
    assert stored[0]["correction"] == "Blue, call [PHONE]" and stored[0]["answer"] == answers[0]
    prefs = rows(db, "select * from tunelab_preferences where source = 'feedback'")
    distinct = {a for a in answers if a != second["choices"][0]["message"]["content"]}
    assert len(prefs) == len(distinct) and {p["rejected"] for p in prefs} == distinct
    assert all(p["chosen"] == second["choices"][0]["message"]["content"] for p in prefs)

    unknown = post({"response_id": "chatcmpl-nope", "rating": "up"}, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"
    for bad in ({"response_id": first["id"]}, {"response_id": first["id"], "rating": "meh"},
                {"response_id": second["id"], "choice": 0}, {"response_id": first["id"], "choice": 5}):  # fmt: skip
        answer = post(bad, headers=AUTH)
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", bad
    broken = httpx.post(f"{server.url}/v1/feedback", content=b"{not json", timeout=30,
                        headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert post({"response_id": first["id"], "rating": "up"}).status_code == 401
    assert len(rows(db, "select * from tunelab_feedback")) == 2  # refusals stored nothing

    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert re.search(r'tunelab_live_feedback_rate\{kind="down"\} 0\.\d*[1-9]', metrics)
    assert re.search(r"tunelab_live_input_chars [1-9]", metrics)


def test_review_page_is_blind_and_stores_a_preference(served) -> None:
    server, db = served
    chat(server.url, "name a fruit", temperature=0)
    basic = {"Authorization": "Basic " + base64.b64encode(f"reviewer:{KEY}".encode()).decode()}
    refused = httpx.get(f"{server.url}/review", timeout=30)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")

    page = httpx.get(f"{server.url}/review", headers=basic, timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    body = page.text
    assert "Answer 1" in body and "Answer 2" in body
    page_only = re.sub(r'<div class="answer">.*?</div>', "", body, flags=re.S)  # the answers are the model's text
    assert not re.search(r"<script|<link|src=|https?://", page_only)  # nothing fetched from elsewhere
    shown = re.sub(r"action='[^']*'", "", body)  # the form's address names the pair, never the sides
    assert BASE not in shown and ADAPTER not in shown
    token = re.search(r"name='token' value='([^']+)'", body).group(1)

    before = len(rows(db, "select * from tunelab_preferences where source = 'review'"))
    form = {"Content-Type": "application/x-www-form-urlencoded", **basic}
    rated = httpx.post(f"{server.url}/review", content=f"token={token}&verdict=left", headers=form, timeout=30)
    assert rated.status_code == 303 and rated.headers["location"].startswith("/review?")
    prefs = rows(db, "select * from tunelab_preferences where source = 'review'")
    left, right = re.findall(r'<div class="answer"><h3>Answer \d</h3>(.*?)</div>', body, re.S)
    if left != right:  # identical answers are no preference
        assert len(prefs) == before + 1
        assert {prefs[-1]["chosen_model"], prefs[-1]["rejected_model"]} == {BASE, ADAPTER}
    again = httpx.post(f"{server.url}/review", content=f"token={token}&verdict=left", headers=form, timeout=30)
    assert again.status_code == 400  # single use
    forged = httpx.post(f"{server.url}/review", content="token=guess&verdict=left", headers=form, timeout=30)
    assert forged.status_code == 400
