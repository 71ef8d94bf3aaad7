"""The dashboard clicked through in headless Chromium (Debian's chromium and chromium-driver, driven by selenium)
against a live server: the runs list, a run's curve drawn, a tiny training started from the form, its step count
rising, stopped, resumed and finished, two runs compared, and one chat answer streamed.

With TUNELAB_UI_SCREENSHOTS=DIR the main pages are saved there as ui_*.png (the README's pictures)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import Select

from tests.browser import headless_chromium
from tests.helpers import tiny_config
from tunelab.recipes.run import run_training
from tunelab.serve.server import free_port
from tunelab.ui.app import create_app
from tunelab.ui.jobs import read_record
from tunelab.ui.state import Settings

FIRST = ["training.max_steps=20", "training.log_every=1", "training.eval_every=10", "eval.baseline=false",
         "eval.generate=false", "training.num_threads=1"]  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    run_training(tiny_config(tmp_path, tiny_model_dir, *FIRST, name="first"))
    app = create_app(Settings(tmp_path / "runs", data_dirs=[tmp_path, tiny_model_dir]))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        dash = app.state.dashboard
        for name in ("second",):
            if dash.jobs.running(name):
                dash.jobs.stop(name, timeout=10)
        uv.should_exit = True
        thread.join(timeout=10)
        dash.close()


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0, every: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except (StaleElementReferenceException, NoSuchElementException):  # the page was reloading
            found = None
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def logged_step(run_dir: Path) -> int:
    """The last step the run's metrics.jsonl names (a line being written is skipped)."""
    steps = []
    with contextlib.suppress(FileNotFoundError):
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                steps.append(int(json.loads(line).get("step", 0)))
    return max(steps, default=0)


def freeze(pid: int, frozen: bool) -> None:
    """Pause (SIGSTOP) or continue (SIGCONT) the training's process group: on a fast machine a 100-step run of
    the tiny model ends before a page's 2 s poll could show it, so the test holds it still to look."""
    os.killpg(pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def test_dashboard_click_through(server: tuple[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    url, root = server
    shots = Path(os.environ["TUNELAB_UI_SCREENSHOTS"]) if os.environ.get("TUNELAB_UI_SCREENSHOTS") else None
    driver = headless_chromium(tmp_path / "profile", 1200, 900)
    by_css = "css selector"

    def shot(name: str) -> None:
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(shots / f"ui_{name}.png"))

    def read(element_id: str) -> str:
        try:  # the page reloads itself when a run ends: an element may go stale between finding and reading
            return driver.find_element("id", element_id).text
        except (StaleElementReferenceException, NoSuchElementException):
            return ""

    def status() -> str:
        return read("status")

    def step() -> int:
        return int(read("step") or 0)

    try:
        # The runs list, then the finished run's page with its curves drawn by uPlot.
        driver.get(url + "/")
        assert driver.find_element(by_css, '#runs tr[data-name="first"] .badge').text == "finished"
        shot("runs")
        driver.find_element("link text", "first").click()
        wait_for("the loss curve", lambda: driver.find_elements(by_css, '[data-chart="loss"] canvas'))
        assert driver.find_element(by_css, '[data-chart="loss"] .u-title').text == "loss"
        assert step() == 20
        shot("run")

        # Start a tiny training from the form; a checkpoint every 10 steps makes it resumable.
        driver.get(url + "/new")
        data = root / "color.jsonl"
        fields = {"run_name": "second", "model.source": str(tiny_model_dir), "data.train": str(data),
                  "training.max_steps": "100", "training.save_every": "10", "training.log_every": "2",
                  "training.num_threads": "1", "training.learning_rate": "0.003"}  # fmt: skip
        for name, value in fields.items():
            box = driver.find_element("name", name)
            box.clear()
            box.send_keys(value)
        for name, value in {"training.precision": "fp32", "eval.baseline": "false", "eval.generate": "false"}.items():
            Select(driver.find_element("name", name)).select_by_value(value)
        driver.find_element("id", "start").click()
        wait_for("the new run's page", lambda: driver.current_url.endswith("/run/second"), 15)
        run_dir = root / "runs" / "second"
        job = read_record(root / "runs", "second")
        assert job is not None
        seen = []
        for at_least in (2, 10):  # the page shows the step the run is held at, then a higher one
            wait_for(f"training to log step {at_least}", lambda n=at_least: logged_step(run_dir) >= n, 60, every=0.005)
            freeze(job.pid, True)
            held = logged_step(run_dir)
            wait_for(f"the page to show step {held}", lambda: step() == held, 15)  # noqa: B023
            assert status() == "running"
            seen.append(held)
            if at_least == 2:
                freeze(job.pid, False)
        assert 2 <= seen[0] < seen[1] < 100
        driver.find_element("id", "stop").click()  # SIGTERM waits while the process is held
        wait_for("the stop to be recorded", lambda: (read_record(root / "runs", "second") or job).stop_requested, 10)
        freeze(job.pid, False)
        wait_for("the run to stop", lambda: status() == "stopped", 30)
        stopped_at = step()
        assert 0 < stopped_at < 100
        checkpoints = sorted((root / "runs" / "second" / "checkpoints").glob("step-*"))
        assert checkpoints, "a stopped run keeps the checkpoints it wrote"

        wait_for("resume to be enabled", lambda: driver.find_element("id", "resume").is_enabled(), 5)
        driver.find_element("id", "resume").click()
        wait_for("the resumed run", lambda: status() == "running", 20)
        wait_for("the run to finish", lambda: status() == "finished", 120)
        assert step() == 100
        assert (root / "runs" / "second" / "adapter" / "adapter_model.safetensors").is_file()

        # Compare the two runs: one loss chart with a series per run, and their config differences.
        driver.get(url + "/compare?runs=first&runs=second")
        wait_for("the compare chart", lambda: driver.find_elements(by_css, '[data-chart="loss"] canvas'))
        labels = [e.text for e in driver.find_elements(by_css, '[data-chart="loss"] .u-series .u-label')]
        assert labels[1:] == ["first", "second"]
        assert "training.max_steps" in driver.find_element("id", "diff").text
        shot("compare")

        # One chat turn with the first run, streamed through serve's engine.
        driver.get(url + "/chat/first")
        driver.find_element("id", "message").send_keys("what is color of sky")
        box = driver.find_element("id", "max_tokens")
        box.clear()
        box.send_keys("8")
        driver.find_element("id", "send").click()
        answer = wait_for("the streamed answer", lambda: driver.find_elements(by_css, ".msg.assistant.done"), 60)
        assert int(answer[0].get_attribute("data-tokens") or 0) >= 1  # type: ignore[index]
        shot("chat")
    finally:
        driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
