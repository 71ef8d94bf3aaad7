"""`POST /v1/feedback`: a client judges an answer it was given, by the response id that answer carried.

Three kinds, in any combination: a rating (`"rating": "up" | "down"`), a corrected answer (`"correction"`), and
a choice between answers (`"choice": i`): the answers in play are the response's own choices (a request with
n >= 2), followed by those of `compared_to` (another response id, e.g. the same prompt sent to another model);
answer i is preferred to each of the others, one preference row per pair. Feedback rows carry the prompt and the
answer they judge, so retraining can use them without the request row.
"""

from __future__ import annotations

import time
from typing import Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.recipes.monitor.store import Feedback, LoggedRequest, Preference
from tunelab.serve.errors import APIError
from tunelab.serve.traffic import LogUnavailable, TrafficLog

MAX_CORRECTION_CHARS = 100_000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=64)
    """The `id` of the response being judged (chatcmpl-... or cmpl-...)."""
    rating: Literal["up", "down"] | None = None
    """Thumbs up or down for the response's first answer."""
    correction: str | None = Field(default=None, min_length=1, max_length=MAX_CORRECTION_CHARS)
    """The answer the model should have given."""
    choice: int | None = Field(default=None, ge=0, le=63)
    """Index of the best answer among the response's choices followed by `compared_to`'s."""
    compared_to: str | None = Field(default=None, min_length=1, max_length=64)
    """Another response id whose answers compete in `choice`."""

    @model_validator(mode="after")
    def _something_said(self) -> FeedbackRequest:
        if self.rating is None and self.correction is None and self.choice is None:
            raise ValueError("give at least one of rating ('up' or 'down'), correction or choice")
        if self.compared_to is not None and self.choice is None:
            raise ValueError("compared_to needs a choice: the index of the better answer")
        if self.correction is not None and not self.correction.strip():
            raise ValueError("correction is blank; send the corrected answer's text")
        return self


async def submit_feedback(body: FeedbackRequest, log: TrafficLog) -> dict:
    """Store `body`'s judgement of a logged response; 404 for an unknown response id, 503 when the log's
    database cannot be reached."""
    judged = await _find(log, body.response_id, "response_id")
    competitors = [(judged.model, a) for a in judged.answers]
    if body.compared_to is not None:
        other = await _find(log, body.compared_to, "compared_to")
        competitors += [(other.model, a) for a in other.answers]
    preferences = _preferences(body, judged, competitors)
    feedback = None
    if body.rating is not None or body.correction is not None:
        feedback = Feedback(
            response_id=judged.response_id, created=time.time(), model=judged.model, messages=judged.messages,
            answer=judged.answers[0] if judged.answers else "", rating=None if body.rating is None else
            (1 if body.rating == "up" else -1), correction=body.correction,
        )  # fmt: skip
    kinds = [k for k, given in _kinds(body) if given]
    try:
        await anyio.to_thread.run_sync(log.store, feedback, preferences, kinds)
    except LogUnavailable as exc:
        raise APIError(503, f"The feedback could not be stored ({exc}). Retry later.", code="log_unavailable") from None
    return {
        "object": "feedback", "response_id": judged.response_id, "rating": body.rating,
        "correction": body.correction is not None, "preferences": len(preferences),
    }  # fmt: skip


def _kinds(body: FeedbackRequest) -> list[tuple[str, bool]]:
    return [
        ("up", body.rating == "up"), ("down", body.rating == "down"), ("correction", body.correction is not None),
        ("choice", body.choice is not None),
    ]  # fmt: skip


async def _find(log: TrafficLog, response_id: str, param: str) -> LoggedRequest:
    try:
        found = await anyio.to_thread.run_sync(log.lookup, response_id)
    except LogUnavailable as exc:
        raise APIError(503, f"The traffic log cannot be read ({exc}). Retry later.", code="log_unavailable") from None
    if found is None:
        raise APIError(
            404, f"No logged response has the id '{response_id[:64]}'. Send the `id` of a response this server "
            "gave (responses are logged only while it runs with --log; old ones leave with the retention limits).",
            param=param, code="response_not_found",
        )  # fmt: skip
    return found


def _preferences(body: FeedbackRequest, judged: LoggedRequest, competitors: list[tuple[str, str]]) -> list[Preference]:
    if body.choice is None:
        return []
    if len(competitors) < 2:
        raise APIError(
            400, f"choice picks among at least two answers; response '{judged.response_id}' has "
            f"{len(competitors)}. Ask with n >= 2, or name another response in compared_to.", param="choice",
        )  # fmt: skip
    if body.choice >= len(competitors):
        raise APIError(
            400, f"choice is {body.choice}, but there are {len(competitors)} answers (0..{len(competitors) - 1}).",
            param="choice",
        )  # fmt: skip
    chosen_model, chosen = competitors[body.choice]
    now = time.time()
    return [
        Preference(
            created=now, source="feedback", messages=judged.messages, chosen=chosen, rejected=text,
            chosen_model=chosen_model, rejected_model=model, response_id=judged.response_id,
        )
        for i, (model, text) in enumerate(competitors)
        if i != body.choice and text != chosen
    ]  # fmt: skip
