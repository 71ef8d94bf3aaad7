"""`POST /v1/admin/reload`: swap in the champion that `tunelab retrain` promoted, without a restart.

A server started with `--champion FILE` serves a LoRA run (base model + the run's adapter under the run's name).
Reloading reads the pointer file (the path is the operator's, fixed at start: a client can name no file) and
re-points the served name to the promoted adapter (`Adapters.replace`): same base, new adapter, no request lost.
A promoted whole-model run cannot be swapped into a running base; the answer gives the restart command instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.core.errors import DataError
from tunelab.recipes.retrain.promote import read_champion
from tunelab.serve.errors import APIError

if TYPE_CHECKING:
    from tunelab.serve.app import ServerState


def champion_adapter(pointer: Path | None) -> Path | None:
    """The promoted adapter a starting server should serve instead of its run's own (None: none promoted yet, or
    the champion is not an adapter)."""
    if pointer is None or not pointer.is_file():
        return None
    champion = read_champion(pointer)
    return Path(champion["artifact"]) if champion["method"] == "lora" else None


async def reload_champion(state: ServerState) -> dict:
    """Swap the champion in; 400 without --champion, 409 when there is nothing (or nothing swappable) to load."""
    if state.champion is None or state.champion_name is None or state.adapters is None:
        raise APIError(
            400, "This server was not started with --champion FILE on a LoRA run, so it has no champion to reload.",
            code="no_champion",
        )  # fmt: skip
    try:
        champion = read_champion(state.champion)
    except DataError as exc:
        raise APIError(409, str(exc), code="no_champion") from None
    if champion["method"] != "lora":
        raise APIError(
            409, f"The champion '{champion['run']}' trained the whole model ({champion['method']}), which cannot be "
            f"swapped into a running base model. Restart the server: tunelab serve {champion['run']}",
            code="restart_required",
        )  # fmt: skip
    await state.adapters.replace(state.champion_name, Path(champion["artifact"]))
    return {"object": "champion", "model": state.champion_name, "run": champion["run"],
            "adapter": champion["artifact"], "gate": champion.get("gate")}  # fmt: skip
