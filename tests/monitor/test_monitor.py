"""`tunelab monitor` on a run folder and a traffic log written by the log's own store: a window like the training
data raises nothing, a shifted one (another topic and script, empty answers, thumbs down) raises the alerts it
should; the report's files; exit codes 1 (alerts), 0 (none) and 2 (user mistakes)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine

from tests.helpers import tiny_config
from tunelab.cli.main import main
from tunelab.config import dump_config
from tunelab.recipes.monitor.monitor import monitor, monitor_settings
from tunelab.recipes.monitor.store import Feedback, LoggedRequest, create_tables, write_feedback, write_requests

HOUR = 3600.0
START = 1_800_000_000.0 - 1_800_000_000.0 % HOUR
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TEMPLATES = ["What day of the week was {d}?", "On which weekday did {d} fall?", "Tell me the weekday of {d}.",
             "{d}: which day of the week?"]  # fmt: skip
SHIFTED = ["Как приготовить борщ на {n} человек?", "Сколько стоит билет до Москвы на {n} число?",
           "Recommend a recipe for {n} people with mushrooms",
           "Which ferry leaves the harbour at {n} o'clock?"]  # fmt: skip
SAMPLES = "max_samples=100"  # texts encoded per side: enough for these shifts, quick on a shared CPU


def date_question(rng: random.Random) -> tuple[str, str]:
    date = f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return rng.choice(TEMPLATES).format(d=date), rng.choice(DAYS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The encoder's small batches run faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A run folder as `train` writes it (its config names the training data); the monitor needs no weights."""
    tmp = tmp_path_factory.mktemp("monitor")
    rng = random.Random(0)
    data = tmp / "dates.jsonl"
    with data.open("w") as fh:
        for _ in range(300):
            question, answer = date_question(rng)
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    cfg = tiny_config(tmp, tiny_model_dir, f"data.train={data}", name="dates")
    folder = tmp / "runs" / "dates"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(cfg))
    return folder


def write_log(db: Path, shifted: bool) -> None:
    """Hour 0: 60 requests like the training data, answered well, 10 thumbs up. With `shifted`, hour 1: 60 on
    another topic (half in Cyrillic), a quarter of the answers empty, 8 thumbs down of 10 ratings."""
    rng = random.Random(1)
    rows, feedback = [], []
    for i in range(60):
        question, answer = date_question(rng)
        rows.append(LoggedRequest(f"chatcmpl-a{i}", START + i * 50, "dates", "chat", question, [], [answer],
                                  ["stop"], 20, 2, 0.1))  # fmt: skip
    feedback += [Feedback(f"chatcmpl-a{i}", START + 3000 + i, "dates", [], "x", rating=1) for i in range(10)]
    if shifted:
        for i in range(60):
            question = rng.choice(SHIFTED).format(n=rng.randint(2, 12))
            answer = "" if i % 4 == 0 else rng.choice(DAYS)
            rows.append(LoggedRequest(f"chatcmpl-b{i}", START + HOUR + i * 50, "dates", "chat", question, [],
                                      [answer], ["stop"], 20, 2, 0.1))  # fmt: skip
        feedback += [Feedback(f"chatcmpl-b{i}", START + HOUR + 3000 + i, "dates", [], "", rating=-1 if i < 8 else 1)
                     for i in range(10)]  # fmt: skip
    engine = create_engine(f"sqlite:///{db}")
    create_tables(engine)
    with engine.begin() as conn:
        write_requests(conn, rows)
        write_feedback(conn, feedback)
    engine.dispose()


def test_same_distribution_is_quiet_and_a_shift_alerts(run_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    write_log(db, shifted=True)
    result = monitor(run_dir, str(db), monitor_settings(overrides=[SAMPLES]))
    same, moved = result.windows
    assert same.requests == moved.requests == 60 and same.tested and moved.tested
    assert same.alerts == [], same.alerts
    assert same.signals["embedding_p"] > 0.05 and same.signals["unseen_rate"] < 0.2
    assert same.signals["feedback"] == {"up": 10, "down": 0, "corrections": 0, "choices": 0}
    fired = {line.split(": ", 1)[1].split()[0] for line in moved.alerts}
    assert {"embedding_p", "charset_distance", "unseen_rate", "empty_rate", "thumbs_down_rate"} <= fired
    assert moved.signals["embedding_p"] < 0.01 and moved.signals["empty_rate"] == pytest.approx(0.25)
    assert moved.signals["thumbs_down_rate"] == pytest.approx(0.8)


def test_command_writes_report_and_exit_codes(run_dir: Path, tmp_path: Path, capsys) -> None:
    quiet, loud = tmp_path / "quiet.db", tmp_path / "loud.db"
    write_log(quiet, shifted=False)
    write_log(loud, shifted=True)
    out = tmp_path / "report"
    assert main(["monitor", str(run_dir), "--log", str(quiet), "--out", str(out), "--set", SAMPLES]) == 0
    assert "no alerts" in capsys.readouterr().out
    report = json.loads((out / "monitor.json").read_text())
    assert len(report["windows"]) == 1 and report["alerts"] == []
    assert (out / "monitor.png").read_bytes()[:4] == b"\x89PNG" and "## Windows" in (out / "monitor.md").read_text()

    with pytest.raises(SystemExit) as exited:
        main(["monitor", str(run_dir), "--log", str(loud), "--out", str(out), "--set", "thumbs_down_rate=0.9",
              "--set", SAMPLES])  # fmt: skip
    assert exited.value.code == 1
    printed = capsys.readouterr().out
    assert "ALERT" in printed and "embedding_p" in printed and "thumbs_down_rate" not in printed  # raised limit
    assert "ALERT" in (out / "monitor.md").read_text()

    assert main(["monitor", str(run_dir), "--log", str(loud), "--set", "embeding_p=0.1"]) == 2
    assert "Did you mean 'embedding_p'" in capsys.readouterr().err.replace("\n", " ")
    assert main(["monitor", str(run_dir), "--log", str(tmp_path / "missing.db")]) == 2
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    assert main(["monitor", str(run_dir), "--log", str(corrupt)]) == 2
    assert "not a database" in capsys.readouterr().err
