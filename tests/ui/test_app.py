"""The dashboard's HTTP app on real run folders: listing (corrupt and half-written folders included), the run,
compare and form pages, downsampling of long curves, path and token checks, and start refusals."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import tunelab.ui.jobs as jobs_module
from tests.tiny import write_color_task
from tunelab.cli.args import build_parser
from tunelab.cli.ui import settings_from
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.ui.app import create_app
from tunelab.ui.downsample import downsample
from tunelab.ui.state import Settings

CONFIG = "model:\n  source: tiny\nmethod:\n  name: lora\nobjective:\n  name: sft\ntraining:\n  max_steps: 5\n"


def make_run(root: Path, name: str, steps: int = 20, *, config: str | None = CONFIG, finished: bool = True) -> Path:
    """A run folder as `tunelab train` leaves it: config, metrics every step (val every 5), a checkpoint."""
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.yaml").write_text(config)
    lines = [{"step": s, "loss": 3.0 - s / steps, "lr": 1e-3, "tokens_per_s": 100.0 + s, "peak_mem_mb": 50.0}
             for s in range(1, steps + 1)]  # fmt: skip
    lines += [{"step": s, "val_loss": 3.1 - s / steps, "val_token_acc": s / steps} for s in range(5, steps + 1, 5)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    ckpt = folder / "checkpoints" / f"step-{steps:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": steps, "finished": finished}))
    old = time.time() - 3600
    for f in [folder / "metrics.jsonl", folder / "config.yaml"]:
        if f.exists():
            os.utime(f, (old, old))
    os.utime(folder / "checkpoints", (old, old))
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "alpha", 20)
    make_run(root, "beta", 40, config=CONFIG.replace("max_steps: 5", "max_steps: 9"), finished=False)
    return root


def client(root: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(root, **settings)), base_url="http://127.0.0.1")


def test_runs_list_status_search_and_sort(runs: Path) -> None:
    c = client(runs)
    rows = c.get("/api/runs", params={"sort": "name"}).json()["runs"]
    assert [(r["name"], r["status"], r["step"], r["method"], r["model"]) for r in rows] == [
        ("alpha", "finished", 20, "lora", "tiny"), ("beta", "stopped", 40, "lora", "tiny")]  # fmt: skip
    assert rows[0]["best"]["val_loss"] == pytest.approx(3.1 - 20 / 20)
    assert [r["name"] for r in c.get("/api/runs", params={"sort": "step"}).json()["runs"]] == ["beta", "alpha"]
    assert [r["name"] for r in c.get("/api/runs", params={"q": "STOPPED"}).json()["runs"]] == ["beta"]
    page = c.get("/", params={"q": "alp"})
    assert page.status_code == 200 and "/run/alpha" in page.text and "/run/beta" not in page.text


def test_corrupt_and_half_written_folders_are_listed_and_pages_still_open(runs: Path) -> None:
    broken = make_run(runs, "no-config", 10, config=None)
    with (broken / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "loss": 2.')  # a write cut short
    partial = make_run(runs, "cut", 10)
    with (partial / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "lo')
    bad_yaml = make_run(runs, "bad-yaml", 10, config="model: [unclosed\n")
    (bad_yaml / "eval_stats.json").write_text("{not json")
    (runs / "empty").mkdir()  # not a run folder at all: not listed
    c = client(runs)
    rows = {r["name"]: r for r in c.get("/api/runs").json()["runs"]}
    assert set(rows) == {"alpha", "beta", "no-config", "cut", "bad-yaml"}
    assert rows["no-config"]["status"] == "corrupt" and "no config.yaml" in rows["no-config"]["problems"][0]
    assert rows["bad-yaml"]["status"] == "corrupt"
    assert rows["cut"]["status"] == "finished" and rows["cut"]["step"] == 10
    assert "1 line(s) do not parse (line 13)" in rows["cut"]["problems"][0]
    for name in rows:
        assert c.get(f"/run/{name}").status_code == 200
        live = c.get(f"/api/run/{name}/live").json()
        assert live["charts"][0]["title"] == "loss"
    assert "partial" in c.get("/").text


def test_run_page_sections_from_real_files(runs: Path) -> None:
    run = runs / "alpha"
    stats = {"columns": ["base", "tuned"], "examples": 4, "values": {"base": {"exact_match": 0.25},
             "tuned": {"exact_match": 0.75}}, "intervals": {"base": {"exact_match": {"estimate": 0.25, "low": 0.0,
             "high": 0.6}}, "tuned": {"exact_match": {"estimate": 0.75, "low": 0.4, "high": 1.0}}}}  # fmt: skip
    (run / "eval_stats.json").write_text(json.dumps(stats))
    base = [{"prompt": f"q{i}", "reference": "a", "prediction": "a" if i == 0 else "b", "exact_match": float(i == 0)}
            for i in range(4)]  # fmt: skip
    tuned = [{**r, "prediction": "a" if i < 3 else "b", "exact_match": float(i < 3)} for i, r in enumerate(base)]
    (run / "predictions_base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in base))
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tuned))
    (run / "rejects.jsonl").write_text(json.dumps({"file": "d.jsonl", "line": 3, "reason": "empty answer <b>"}) + "\n")
    (run / "diagnosis.json").write_text(json.dumps({"verdict": "good fit", "evidence": ["gap small"], "advice": []}))
    page = client(runs).get("/run/alpha").text
    assert "25.0% [0, 60]" in page and "75.0% [40, 100]" in page
    assert "improved (2)" in page and "4 of 4 shown" in page
    assert "empty answer &lt;b&gt;" in page  # run files are user data: escaped
    assert "good fit" in page and "step-00000020" in page and "max_steps: 5" in page
    filtered = client(runs).get("/run/alpha", params={"status": "improved", "q": "q2"}).text
    assert "1 of 4 shown" in filtered


def test_long_curves_are_downsampled_keeping_extremes(tmp_path: Path) -> None:
    xs = [float(i) for i in range(100_000)]
    ys = [1.0 + (i % 977) / 1000 for i in range(100_000)]
    ys[54_321], ys[77_777] = 9.0, -4.0  # a spike and a dip
    dx, dy = downsample(xs, ys)
    assert len(dx) <= 2000 and dx == sorted(dx)
    assert dx[0] == 0 and dx[-1] == 99_999 and 9.0 in dy and -4.0 in dy
    root = tmp_path / "runs"
    run = make_run(root, "long", 100_000)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 54_321, "loss": 50.0}) + "\n")
    c = client(root)
    started = time.perf_counter()
    charts = {ch["title"]: ch for ch in c.get("/api/run/long/live").json()["charts"]}
    first = time.perf_counter() - started
    started = time.perf_counter()
    c.get("/api/run/long/live")  # the page's next poll: the unchanged file is not parsed again
    again = time.perf_counter() - started
    print(f"100k-step run: live curves in {first:.2f} s, then {again:.2f} s")
    assert first < 10 and again < min(1.0, first)
    assert all(len(ch["x"]) <= 2000 for ch in charts.values())
    assert 50.0 in charts["loss"]["series"][0]["values"]  # the spike survives
    assert len(charts["loss"]["series"]) == 2  # with validation loss, aligned on one x axis


def test_two_hundred_runs_list_fast_and_from_cache(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for k in range(200):
        make_run(root, f"run-{k:03d}", 50)
    c = client(root)
    started = time.perf_counter()
    assert len(c.get("/api/runs").json()["runs"]) == 200
    first = time.perf_counter() - started
    started = time.perf_counter()
    assert c.get("/").status_code == 200
    again = time.perf_counter() - started
    assert first < 10 and again < first


def test_compare_overlays_runs_and_diffs_configs(runs: Path) -> None:
    c = client(runs)
    charts = c.get("/api/compare", params=[("runs", "alpha"), ("runs", "beta")]).json()["charts"]
    loss = charts[0]
    assert loss["title"] == "loss" and [s["label"] for s in loss["series"]] == ["alpha", "beta"]
    assert len(loss["x"]) == 40  # beta's 40 steps cover alpha's 20
    page = c.get("/compare", params=[("runs", "alpha"), ("runs", "beta")]).text
    assert "training.max_steps" in page and "model.source" not in page


def test_paths_outside_the_runs_folder_are_refused(runs: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    (runs / "link").symlink_to(tmp_path)  # a symlink out of the runs folder
    c = client(runs)
    for url in ["/file/../secret.txt", "/file/link/secret.txt", "/file/%2E%2E/secret.txt", "/run/link",
                "/api/run/../runs/alpha/live", "/file//etc/passwd"]:  # fmt: skip
        response = c.get(url)
        assert response.status_code in (403, 404), url
        assert "key" not in response.text
    assert c.get("/file/alpha/metrics.jsonl").status_code == 200


def test_token_cookie_host_and_origin_checks(runs: Path) -> None:
    c = client(runs, token="s3cret")
    assert c.get("/api/runs").status_code == 401
    assert c.get("/api/runs", headers={"X-Tunelab-Token": "s3cret"}).status_code == 200
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    first = c.get("/run/alpha", params={"token": "s3cret"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/run/alpha"
    assert c.get("/api/runs").status_code == 200  # the cookie set by ?token= now carries it
    keyless = TestClient(create_app(Settings(runs)), base_url="http://evil.example")
    assert keyless.get("/api/runs").status_code == 401  # no token: loopback Host names only
    cross = client(runs).post("/api/run/alpha/stop", headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403


def test_cli_refuses_a_public_bind_without_token(tmp_path: Path) -> None:
    args = build_parser().parse_args(["ui", "--runs", str(tmp_path), "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="without a token"):
        settings_from(args)
    args = build_parser().parse_args(["ui", "--runs", str(tmp_path), "--host", "0.0.0.0", "--token", "t"])
    assert settings_from(args).token == "t"


def form(tmp_path: Path, model: Path, **extra: str) -> dict[str, str]:
    data = tmp_path / "data" / "color.jsonl"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        write_color_task(data, 40)
    values = {"run_name": "fresh", "model.source": str(model), "data.train": str(data), "method.name": "lora",
              "objective.name": "sft", "training.max_steps": "3"}  # fmt: skip
    return {**values, **extra}


def test_form_errors_are_validates_sentences_and_start_nothing(runs: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    c = client(runs, data_dirs=[tmp_path])
    response = c.post("/new", data=form(tmp_path, model, **{"training.learning_rate": "-1", "method.r": "abc"}))
    assert response.status_code == 422
    with pytest.raises(ConfigError) as validate:
        load_config(None, [f"data.train={tmp_path}", "training.learning_rate=-1", "method.r=abc"])
    for sentence in str(validate.value).split("command line: ")[1:]:
        assert sentence.split(" Fix the config")[0].strip().replace("'", "&#39;") in response.text
    assert response.text.count('class="field invalid"') == 2
    assert not (runs / "fresh").exists() and not (runs / ".tunelab-ui" / "jobs").exists()
    # A data file outside the allowed folders, and a YAML alias bomb: refused the same way.
    outside = c.post("/new", data=form(tmp_path, model, **{"data.train": "/etc/hostname"}))
    assert outside.status_code == 422 and "outside the folders this dashboard may read" in outside.text
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
    )
    upload = c.post("/new", data={"run_name": "bomb"}, files={"yaml_file": ("x.yaml", bomb.encode())})
    assert upload.status_code == 422 and "values" in upload.text and not (runs / "bomb").exists()
    bad_name = c.post("/new", data=form(tmp_path, model, run_name="../escape"))
    assert bad_name.status_code == 422 and "not a plain folder name" in bad_name.text


def test_a_second_start_of_a_run_name_is_refused(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The process is a stand-in that sleeps: the refusal, not the training, is under test here.
    monkeypatch.setattr(
        jobs_module, "train_command", lambda args: [sys.executable, "-c", "import time; time.sleep(30)"]
    )
    model = tmp_path / "model"
    model.mkdir()
    app = create_app(Settings(runs, data_dirs=[tmp_path]))
    c = TestClient(app, base_url="http://127.0.0.1")
    first = c.post("/new", data=form(tmp_path, model), follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/run/fresh"
    again = c.post("/new", data=form(tmp_path, model))
    assert again.status_code == 422 and "already running" in again.text
    existing = c.post("/new", data=form(tmp_path, model, run_name="alpha"))
    assert existing.status_code == 422 and "already exists" in existing.text
    assert c.post("/api/run/alpha/stop").status_code == 409  # not running
    config = (runs / ".tunelab-ui" / "configs" / "fresh.yaml").read_text()
    assert f"dir: {runs.resolve()}" in config and "name: fresh" in config
    jobs = app.state.dashboard.jobs
    jobs.stop("fresh", timeout=10)
    deadline = time.monotonic() + 10
    while jobs_module.read_record(runs.resolve(), "fresh").state == "running" and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    assert jobs_module.read_record(runs.resolve(), "fresh").state == "stopped"  # type: ignore[union-attr]


def test_an_uploaded_yaml_starts_with_data_paths_from_the_runs_folder(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    def sleeper(args: list[str]) -> list[str]:
        started.append(args)
        return [sys.executable, "-c", "pass"]

    monkeypatch.setattr(jobs_module, "train_command", sleeper)
    write_color_task(runs / "color.jsonl", 20)
    model = tmp_path / "model"
    model.mkdir()
    text = f"model:\n  source: {model}\ndata:\n  train: color.jsonl\ntraining:\n  max_steps: 2\n"
    c = TestClient(create_app(Settings(runs, data_dirs=[tmp_path])), base_url="http://127.0.0.1")
    response = c.post("/new", data={"run_name": "up"}, files={"yaml_file": ("c.yaml", text.encode())},
                      follow_redirects=False)  # fmt: skip
    assert response.status_code == 303 and response.headers["location"] == "/run/up"
    written = load_config(runs / ".tunelab-ui" / "configs" / "up.yaml")
    assert written.data.train == [str((runs / "color.jsonl").resolve())] and written.training.max_steps == 2
    assert started[0][1:] == ["--set", f"output.dir={runs.resolve()}", "--set", "output.name=up"]
    assert not list(runs.glob(".upload-*"))  # the upload itself is not kept


def test_study_and_monitor_pages(runs: Path) -> None:
    study = runs / "sweep"
    make_run(study, "trial-0", 5)
    (study / "trials.csv").write_text("number,state,value,training.learning_rate\n0,COMPLETE,0.5,0.001\n")
    (study / "history.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (study / "best.yaml").write_text("training:\n  learning_rate: 0.001\n")
    monitor = runs / "alpha" / "monitor"
    monitor.mkdir()
    (monitor / "monitor.json").write_text(json.dumps({"log": "t.db", "windows": [{}, {}], "alerts": ["drift <x>"]}))
    c = client(runs)
    listing = c.get("/api/runs").json()
    assert listing["studies"] == ["sweep"] and "sweep/trial-0" in {r["name"] for r in listing["runs"]}
    page = c.get("/study/sweep").text
    assert "COMPLETE" in page and "/file/sweep/history.png" in page and "learning_rate: 0.001" in page
    assert c.get("/file/sweep/history.png").headers["content-type"] == "image/png"
    assert c.get("/run/sweep/trial-0").status_code == 200
    assert 'href="/monitor/alpha"' in c.get("/run/alpha").text
    assert "drift &lt;x&gt;" in c.get("/monitor/alpha").text and "2 windows" in c.get("/monitor/alpha").text
    assert c.get("/study/alpha").status_code == 403  # not a study


def test_a_run_whose_process_fails_shows_failed_with_its_output(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = [sys.executable, "-c", "import sys; print('error: the model folder has no weights'); sys.exit(2)"]
    monkeypatch.setattr(jobs_module, "train_command", lambda args: failing)
    model = tmp_path / "model"
    model.mkdir()
    c = TestClient(create_app(Settings(runs, data_dirs=[tmp_path])), base_url="http://127.0.0.1")
    assert c.post("/new", data=form(tmp_path, model), follow_redirects=False).status_code == 303
    deadline = time.monotonic() + 20
    while c.get("/api/run/fresh/live").json()["run"]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    live = c.get("/api/run/fresh/live").json()
    assert live["run"]["status"] == "failed" and "the model folder has no weights" in live["log"]
    assert {r["name"]: r["status"] for r in c.get("/api/runs").json()["runs"]}["fresh"] == "failed"
    assert c.post("/api/run/fresh/resume").status_code == 409  # no checkpoint to resume from
