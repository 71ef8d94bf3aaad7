"""The dashboard's HTTP app: server-rendered pages over a runs folder and the JSON endpoints they poll every 2 s.

Access: with a token (required for a non-local bind, see `tunelab.cli.ui`) every request must carry it, as an
`X-Tunelab-Token` or `Authorization: Bearer` header or the cookie that opening any page with `?token=T` sets.
Without one, only loopback Host names are answered (a page elsewhere cannot reach the dashboard through a
rebound DNS name), and in both cases a POST whose Origin is another site is refused, so a page in another tab
cannot start or stop runs. Every path from the browser goes through `paths.inside` / `paths.within_any`.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from tunelab.core.errors import TunelabError
from tunelab.serve.errors import APIError
from tunelab.ui import pages
from tunelab.ui.curves import CurveCache, compare_charts, config_diff, run_charts
from tunelab.ui.jobs import JobError, log_path
from tunelab.ui.paths import PathRefused, inside
from tunelab.ui.runs_index import STATUSES, RunsIndex, read_run_config
from tunelab.ui.start import new_form, start_from_form, start_from_yaml
from tunelab.ui.state import Dashboard, Settings

COOKIE = "tunelab_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
SERVED_FILES = {".png": "image/png", ".html": "text/html", ".md": "text/plain", ".json": "application/json",
                ".jsonl": "text/plain", ".csv": "text/plain", ".txt": "text/plain", ".yaml": "text/plain"}  # fmt: skip
SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda r: r["name"], "status": lambda r: r["status"], "age": lambda r: r["age_s"],
    "step": lambda r: r["step"], "objective": lambda r: r["objective"], "method": lambda r: r["method"],
    "model": lambda r: r["model"], "val_loss": lambda r: r["best"].get("val_loss", float("inf")),
}  # fmt: skip


def render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(pages.templates.get_template(template).render(**context), status_code=status_code)


def list_runs(index: RunsIndex, query: str = "", sort: str = "age", descending: bool | None = None) -> list[dict]:
    """The runs as JSON rows, filtered by a search text (name, status, objective, method, model) and sorted."""
    rows = [s.as_json() for s in index.summaries()]
    needle = query.strip().lower()
    if needle:
        rows = [r for r in rows if needle in " ".join([r["name"], r["status"], r["objective"], r["method"],
                                                       r["model"]]).lower()]  # fmt: skip
    key = SORT_KEYS.get(sort, SORT_KEYS["age"])
    rows.sort(key=key, reverse=bool(descending) if descending is not None else sort == "step")
    return rows


def _log_tail(path: Path, size: int = 20_000) -> str:
    """The end of a process's output log (empty when there is none)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _authorised(request: Request, token: str | None) -> bool:
    if token is None:
        return (request.url.hostname or "") in LOOPBACK
    given = request.headers.get("x-tunelab-token") or request.cookies.get(COOKIE) or ""
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        given = given or bearer[7:]
    return hmac.compare_digest(given.encode(), token.encode())


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or request.method in ("GET", "HEAD"):
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def create_app(settings: Settings) -> FastAPI:
    """The dashboard app over `settings.runs`; `app.state.dashboard` holds its state (close it when done)."""
    root = settings.runs.resolve()
    dash = Dashboard.open(settings)
    curves = CurveCache()
    app = FastAPI(title="tunelab dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dashboard = dash
    app.mount("/static", StaticFiles(packages=[("tunelab.ui", "static")]), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        token = settings.token
        offered = request.query_params.get("token")
        if token is not None and offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        if not _authorised(request, token):
            return JSONResponse({"error": "This dashboard needs its token: open it with ?token=T (or send the "
                                 "X-Tunelab-Token header)."}, status_code=401)  # fmt: skip
        if not _same_origin(request):
            return JSONResponse({"error": "Cross-site requests are refused."}, status_code=403)
        try:
            return await call_next(request)
        except PathRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)

    def run_dir(name: str) -> Path:
        folder = inside(root, name)
        if not folder.is_dir() or folder == root:
            raise PathRefused(f"There is no run '{name}' in the runs folder.")
        return folder

    @app.get("/", response_class=HTMLResponse)
    def runs_page(q: str = "", sort: str = "age") -> HTMLResponse:
        rows = list_runs(dash.index, q, sort)
        return render("runs.html", rows=rows, q=q, sort=sort, sorts=list(SORT_KEYS), statuses=STATUSES,
                      studies=dash.index.studies(), root=str(root))  # fmt: skip

    @app.get("/api/runs")
    def runs_json(q: str = "", sort: str = "age", desc: bool | None = None) -> dict:
        return {"runs": list_runs(dash.index, q, sort, desc), "studies": dash.index.studies()}

    @app.get("/run/{name:path}", response_class=HTMLResponse)
    def run_view(name: str, status: str = "all", q: str = "") -> HTMLResponse:
        folder = run_dir(name)
        summary = dash.index.summary(folder)
        return render("run.html", run=summary, page=pages.run_page(folder, status, q), name=name)

    @app.get("/api/run/{name:path}/live")
    def run_live(name: str) -> dict:
        folder = run_dir(name)
        summary = dash.index.summary(folder)
        charts = run_charts(curves.columns(folder / "metrics.jsonl"), settings.max_points)
        return {"run": summary.as_json(), "charts": charts, "log": _log_tail(log_path(root, name))}

    @app.get("/compare", response_class=HTMLResponse)
    def compare_view(runs: Annotated[list[str] | None, Query()] = None) -> HTMLResponse:
        names = [n for n in (runs or []) if n]
        configs = {n: read_run_config(run_dir(n))[0] for n in names}
        return render("compare.html", names=names, diff=config_diff(configs),
                      all_runs=[r["name"] for r in list_runs(dash.index, sort="name")])  # fmt: skip

    @app.get("/api/compare")
    def compare_json(runs: Annotated[list[str] | None, Query()] = None) -> dict:
        cols = {n: curves.columns(run_dir(n) / "metrics.jsonl") for n in (runs or []) if n}
        return {"charts": compare_charts(cols, settings.max_points)}

    @app.get("/new", response_class=HTMLResponse)
    def new_view(request: Request) -> HTMLResponse:
        return render("new.html", **new_form(dict(request.query_params)))

    @app.post("/new", response_class=HTMLResponse, response_model=None)
    async def new_submit(request: Request) -> Response:
        form = await request.form()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        upload = form.get("yaml_file")
        text = values.get("yaml_text", "")
        if upload is not None and not isinstance(upload, str):
            text = (await upload.read()).decode("utf-8", errors="replace") or text
        if text.strip():
            started, context = start_from_yaml(dash, text, values.get("run_name", ""))
        else:
            started, context = start_from_form(dash, values)
        if started is not None:
            return RedirectResponse(f"/run/{started}", status_code=303)
        return render("new.html", status_code=422, **context)

    @app.post("/api/run/{name:path}/stop")
    def stop_run(name: str) -> JSONResponse:
        run_dir(name)
        try:
            record = dash.jobs.stop(name)
        except JobError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"stopping": record.pid})

    @app.post("/api/run/{name:path}/resume")
    def resume_run(name: str) -> JSONResponse:
        folder = run_dir(name)
        # Without a checkpoint `tunelab train --resume` starts the run again in its folder, which needs its config.
        if not (folder / "checkpoints").is_dir() and not (folder / "config.yaml").is_file():
            problem = f"Run '{name}' has neither a checkpoint nor a config to resume from (training.save_every sets "
            return JSONResponse({"error": problem + "how often a checkpoint is written)."}, status_code=409)
        try:
            record = dash.jobs.start(name, [str(folder), "--resume"])
        except JobError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"pid": record.pid})

    @app.get("/chat/{name:path}", response_class=HTMLResponse)
    def chat_view(name: str) -> HTMLResponse:
        run_dir(name)
        return render("chat.html", name=name)

    @app.post("/api/chat/{name:path}", response_model=None)
    async def chat_answer(name: str, request: Request) -> Response:
        folder = run_dir(name)
        try:
            body = json.loads(await request.body())
            stream = await dash.chat.answer(
                folder, body.get("messages") or [], int(body.get("max_tokens", 64)),
                float(body.get("temperature", 0.0)), bool(body.get("base", False)),
            )  # fmt: skip
        except APIError as exc:
            return exc.response()
        except (TunelabError, ValueError, TypeError) as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return StreamingResponse(stream, media_type="text/event-stream")

    @app.get("/study/{name}", response_class=HTMLResponse)
    def study_view(name: str) -> HTMLResponse:
        folder = run_dir(name)
        if not (folder / "trials.csv").is_file():
            raise PathRefused(f"'{name}' is not a study folder (it has no trials.csv).")
        return render("study.html", name=name, page=pages.study_page(folder))

    @app.get("/monitor/{name:path}", response_class=HTMLResponse)
    def monitor_view(name: str) -> HTMLResponse:
        return render("monitor.html", name=name, page=pages.monitor_page(run_dir(name)))

    @app.get("/file/{path:path}", response_model=None)
    def run_file(path: str) -> Response:
        target = inside(root, path)
        kind = SERVED_FILES.get(target.suffix)
        if kind is None or not target.is_file():
            return JSONResponse({"error": f"'{path}' is not a file the dashboard shows."}, status_code=404)
        return FileResponse(target, media_type=kind)

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "time": time.time()}

    return app
