"""Joining a regenerated chat answer to the text a caller already received. Pure.

When a stream breaks mid-answer and no step can continue it from a prefill, the next step is
asked the same question again. If its answer starts with the text already delivered (whitespace
runs count as one space), the caller gets only what follows it, as if the first stream had gone
on; otherwise the rescue fails and the caller gets the partial text in an error. Chat
completions only: one choice, content deltas.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["Splice", "SpliceFailed"]


class SpliceFailed(Exception):
    """The regenerated answer does not start with the delivered text (or cannot be spliced)."""


def _normalized(text: str) -> tuple[str, list[int]]:
    """``text`` with whitespace runs as one space (none leading), and for each of its characters
    the index in ``text`` just after it."""
    out: list[str] = []
    ends: list[int] = []
    for index, char in enumerate(text):
        if not char.isspace():
            out.append(char)
            ends.append(index + 1)
        elif out and out[-1] != " ":
            out.append(" ")
            ends.append(index + 1)
        elif out:
            ends[-1] = index + 1  # the run goes on
    return "".join(out), ends


class Splice:
    """Fed the regenerated stream's events in order; hands back the ones the caller should see.

    Before the join nothing is handed back; the event that crosses the delivered text is handed
    back trimmed to what is new; every later event passes unchanged.
    """

    __slots__ = ("_ends_with_space", "_raw", "_want", "joined")

    def __init__(self, delivered: str) -> None:
        self._want = _normalized(delivered)[0].rstrip()
        self._ends_with_space = delivered[-1:].isspace()
        self._raw = ""
        self.joined = not self._want

    def take(self, event: Any) -> Any | None:
        """The event to deliver in place of ``event`` (None: drop it); raises :class:`SpliceFailed`."""
        if self.joined:
            return event
        if not isinstance(event, Mapping):
            return None  # [DONE] before the join: the answer was shorter than what was delivered
        choices = event.get("choices")
        if not isinstance(choices, list) or len(choices) > 1:
            raise SpliceFailed("not a single-choice chat chunk")
        if not choices:
            return None  # a usage chunk
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice, Mapping) else None
        if not isinstance(delta, Mapping) or not isinstance(delta.get("content") or "", str):
            raise SpliceFailed("not a chat chunk")
        if set(delta) - {"role", "content", "refusal"} or delta.get("refusal"):
            raise SpliceFailed("the answer carries more than text")
        if choice.get("finish_reason") is not None and not delta.get("content"):
            raise SpliceFailed("the new answer ended before reaching the delivered text")
        self._raw += delta.get("content") or ""
        seen, ends = _normalized(self._raw)
        want = self._want
        if len(seen) < len(want):
            if not want.startswith(seen.rstrip()):
                raise SpliceFailed("the new answer does not start with the delivered text")
            return None
        if not seen.startswith(want):
            raise SpliceFailed("the new answer does not start with the delivered text")
        self.joined = True
        rest = self._raw[ends[len(want) - 1] :]
        if self._ends_with_space:
            rest = rest.lstrip()
        trimmed = copy.deepcopy(dict(event))
        trimmed["choices"][0]["delta"] = {"content": rest}
        return trimmed
