"""The next dataset, built from the traffic log: what users corrected, chose and rejected.

- A corrected answer becomes an SFT row: the logged conversation, then the correction as the assistant turn.
  When one response was corrected more than once, the newest correction is the one kept (the others are counted).
- A choice between two answers becomes a preference pair (chosen, rejected) for DPO or KTO.
- A thumbs-down without a correction cannot be trained on (what would the right answer be?): it goes to a review
  queue, counted, for a person to correct.
- Feedback on a text completion (not a chat) goes to the review queue too, with the reason: the next dataset is
  chat rows, the format the run trained on.

A share of the corrections (grouped by prompt, so one prompt is never on both sides) is held out as the gate's new
cases unless a gate file is given: the challenger must be judged on corrections it never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tunelab.recipes.monitor.store import Feedback, LogContents, Preference

Row = dict[str, Any]


@dataclass
class NextData:
    """The rows the log gives, by use, and how many of each kind of feedback it held."""

    sft: list[Row] = field(default_factory=list)
    """Corrections to train on: {"messages": [...], "response_id": ...}."""
    gate_new: list[Row] = field(default_factory=list)
    """Corrections held out for the gate (same shape)."""
    pairs: list[Row] = field(default_factory=list)
    """Preference pairs: {"prompt": [...turns], "chosen": ..., "rejected": ...}."""
    review: list[Row] = field(default_factory=list)
    """What needs a person: thumbs-down without a correction, feedback on completions."""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        """Pieces of feedback that train the challenger: corrections trained on plus preference pairs."""
        return len(self.sft) + len(self.pairs)


def is_chat(messages: list[Any]) -> bool:
    """Whether a logged conversation is chat turns (dicts with a role), not a completion's prompt strings."""
    return bool(messages) and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)


def prompt_turns(messages: list[Any]) -> list[Row]:
    """The conversation the model answered, as plain {"role", "content"} turns."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def build_next_data(log: LogContents, gate_fraction: float = 0.3, seed: int = 0, hold_out: bool = True) -> NextData:
    """Sort the log's feedback into SFT rows, preference pairs and the review queue; hold out `gate_fraction` of
    the corrected prompts for the gate when `hold_out` (no gate file was given)."""
    out = NextData()
    corrections = _newest_corrections(log.feedback, out)
    for item in log.feedback:
        if item.rating == -1 and item.correction is None:
            out.review.append(_review_row(item, "thumbs-down without a correction"))
        elif not is_chat(item.messages) and item.correction is not None:
            out.review.append(_review_row(item, "a correction of a text completion (the next dataset is chat rows)"))
    rows = [
        {"messages": [*prompt_turns(c.messages), {"role": "assistant", "content": c.correction or ""}],
         "response_id": c.response_id}
        for c in corrections
    ]  # fmt: skip
    out.sft, out.gate_new = split_by_prompt(rows, gate_fraction if hold_out else 0.0, seed)
    out.pairs = [_pair(p) for p in log.preferences if is_chat(p.messages)]
    out.review += [_preference_review(p) for p in log.preferences if not is_chat(p.messages)]
    out.counts.update({
        "requests": len(log.requests), "feedback": len(log.feedback), "preferences": len(log.preferences),
        "thumbs_up": sum(f.rating == 1 for f in log.feedback), "thumbs_down": sum(f.rating == -1 for f in log.feedback),
        "corrections": len(corrections), "sft_rows": len(out.sft), "gate_new_rows": len(out.gate_new),
        "pairs": len(out.pairs), "review_queue": len(out.review),
    })  # fmt: skip
    return out


def _newest_corrections(feedback: list[Feedback], out: NextData) -> list[Feedback]:
    newest: dict[str, Feedback] = {}
    for item in feedback:  # oldest first, so a later correction replaces an earlier one
        if item.correction is not None and is_chat(item.messages):
            newest[item.response_id] = item
    chat_corrections = sum(f.correction is not None and is_chat(f.messages) for f in feedback)
    out.counts["corrections_superseded"] = chat_corrections - len(newest)
    return list(newest.values())


def split_by_prompt(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(kept, held out): about `fraction` of the distinct prompts, seeded, with every row of a held-out prompt."""
    keys = sorted({_prompt_key(r) for r in rows})
    random.Random(seed).shuffle(keys)
    held = set(keys[: round(len(keys) * fraction)])
    return [r for r in rows if _prompt_key(r) not in held], [r for r in rows if _prompt_key(r) in held]


def _prompt_key(row: Row) -> str:
    return "\x1f".join(f"{m['role']}:{m['content']}" for m in row["messages"][:-1])


def _pair(p: Preference) -> Row:
    return {"prompt": prompt_turns(p.messages), "chosen": p.chosen, "rejected": p.rejected,
            "source": p.source, "response_id": p.response_id}  # fmt: skip


def _review_row(item: Feedback, reason: str) -> Row:
    return {"response_id": item.response_id, "model": item.model, "messages": item.messages, "answer": item.answer,
            "rating": item.rating, "correction": item.correction, "reason": reason}  # fmt: skip


def _preference_review(p: Preference) -> Row:
    return {
        "response_id": p.response_id,
        "model": p.chosen_model,
        "messages": p.messages,
        "chosen": p.chosen,
        "rejected": p.rejected,
        "reason": "a choice between text completions (the next dataset is chat rows)",
    }
