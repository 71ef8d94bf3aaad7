"""`GET /review`: a page for rating two models blind, side by side, on prompts from the traffic log.

Each page takes a logged prompt at random from the newest ones, has both models answer it greedily, and shows the
two answers in random order with the models' names left out; the reviewer picks the better one (or a tie) and the
choice is stored as a preference (`source = "review"`) by the models' real names. Which side holds which model is
kept on the server under a random single-use token that the form sends back, so the page never tells, and a form
posted from elsewhere (which cannot know a token) stores nothing. Plain server-rendered HTML with inline CSS:
no scripts, no CDN. Browsers log in with HTTP Basic (any user name, an API key as the password).
"""

from __future__ import annotations

import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

import anyio
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunelab.recipes.monitor.store import LoggedRequest, Preference
from tunelab.serve.errors import APIError
from tunelab.serve.traffic import LogUnavailable, TrafficLog

Answer = Callable[[str, LoggedRequest], Awaitable[str]]
"""Generate model `name`'s answer to a logged request."""

PROMPT_POOL = 200  # a page's prompt is drawn from the newest logged requests
MAX_PENDING = 256  # pages shown but not yet rated; the oldest tokens expire past this
VERDICTS = ("left", "right", "tie")

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.turn{background:#f4f4f6;border-radius:6px;padding:.6em .9em;margin:.4em 0;white-space:pre-wrap}
.role{font-size:.8em;color:#666;text-transform:uppercase}
.pair{display:flex;gap:1em}.answer{flex:1;border:1px solid #ccc;border-radius:6px;padding:.8em;white-space:pre-wrap}
.answer h3{margin-top:0}button{font-size:1em;padding:.5em 1.2em;margin:.6em .4em 0 0;cursor:pointer}
.note{color:#555}
"""


@dataclass(frozen=True)
class Pending:
    """A shown page: the prompt, and which model answered on which side."""

    request: LoggedRequest
    left_model: str
    right_model: str
    left: str
    right: str


class Reviews:
    """The review page's two routes: `page` (GET) and `rate` (the form's POST)."""

    def __init__(self, log: TrafficLog, answer: Answer, models: Callable[[], list[str]]) -> None:
        self.log = log
        self.answer = answer
        self.models = models
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._random = secrets.SystemRandom()

    async def page(self, a: str | None, b: str | None) -> HTMLResponse:
        names = self.models()
        if len(names) < 2:
            return _message(
                "Two models are needed", "Serve a base model and an adapter (--adapter NAME=PATH) to compare them."
            )
        a, b = a or names[0], b or names[1]
        unknown = [n for n in (a, b) if n not in names]
        if unknown or a == b:
            what = f"'{unknown[0]}' is not served" if unknown else "the two models must differ"
            return _message("Cannot compare", f"{what}; this server serves {', '.join(names)}.", status=400)
        try:
            logged = await anyio.to_thread.run_sync(self.log.recent, PROMPT_POOL)
        except LogUnavailable as exc:
            return _message("The traffic log cannot be read", str(exc), status=503)
        if not logged:
            return _message("Nothing to review yet", "No request has been logged; pages appear once clients ask.")
        request = self._random.choice(logged)
        try:
            answers = [await self.answer(a, request), await self.answer(b, request)]
        except APIError as exc:  # the logged prompt no longer fits (a model's context, the server's limits)
            return _message("This prompt cannot be answered again", exc.message, status=exc.status)
        if self._random.random() < 0.5:  # blind: the reviewer cannot learn a side
            a, b = b, a
            answers.reverse()
        token = self._remember(Pending(request, a, b, answers[0], answers[1]))
        return HTMLResponse(_render(request, answers, token, self.models_query(a, b)))

    async def rate(self, form: bytes) -> Response:
        fields = {k: v[0] for k, v in parse_qs(form.decode("utf-8", "replace")).items()}
        pending = self._pending.pop(fields.get("token", ""), None)
        verdict = fields.get("verdict", "")
        if pending is None:
            return _message("This page has expired", "Its answers were rated already or are too old; "
                            "open /review for a new pair.", status=400)  # fmt: skip
        if verdict not in VERDICTS:
            return _message("Unknown verdict", f"Choose one of {', '.join(VERDICTS)}.", status=400)
        if verdict != "tie" and pending.left != pending.right:
            chosen_left = verdict == "left"
            preference = Preference(
                created=time.time(), source="review", messages=pending.request.messages,
                chosen=pending.left if chosen_left else pending.right,
                rejected=pending.right if chosen_left else pending.left,
                chosen_model=pending.left_model if chosen_left else pending.right_model,
                rejected_model=pending.right_model if chosen_left else pending.left_model,
                response_id=pending.request.response_id,
            )  # fmt: skip
            try:
                await anyio.to_thread.run_sync(self.log.store, None, [preference], ["choice"])
            except LogUnavailable as exc:
                return _message("The rating could not be stored", str(exc), status=503)
        query = self.models_query(*sorted((pending.left_model, pending.right_model)))
        return RedirectResponse(f"/review?{query}", status_code=303)

    def models_query(self, a: str, b: str) -> str:
        """The page's query string; it names the pair (the reviewer chose it), never the sides."""
        first, second = sorted((a, b))
        return urlencode({"a": first, "b": second})

    def _remember(self, pending: Pending) -> str:
        token = secrets.token_urlsafe(18)
        self._pending[token] = pending
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return token


def _render(request: LoggedRequest, answers: list[str], token: str, query: str) -> str:
    turns = request.messages if request.kind == "chat" else [{"role": "prompt", "content": request.messages[0]}]
    conversation = "".join(
        f'<div class="turn"><div class="role">{html.escape(str(t.get("role", "")))}</div>'
        f"{html.escape(str(t.get('content', '')))}</div>"
        for t in turns
        if isinstance(t, dict)
    )
    sides = "".join(
        f'<div class="answer"><h3>Answer {i + 1}</h3>{html.escape(text) or "<em>(empty)</em>"}</div>'
        for i, text in enumerate(answers)
    )
    buttons = "".join(
        f'<button name="verdict" value="{v}">{label}</button>'
        for v, label in zip(VERDICTS, ("Answer 1 is better", "Answer 2 is better", "Tie"), strict=True)
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tunelab review</title><style>{_STYLE}</style>"
        f"</head><body><h1>Which answer is better?</h1><p class='note'>Two models answered this logged prompt; "
        f"their order is random and their names are hidden.</p>{conversation}<div class='pair'>{sides}</div>"
        f"<form method='post' action='/review?{html.escape(query)}'><input type='hidden' name='token' "
        f"value='{token}'>{buttons}</form></body></html>"
    )


def _message(title: str, text: str, status: int = 200) -> HTMLResponse:
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tunelab review</title><style>{_STYLE}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status)
