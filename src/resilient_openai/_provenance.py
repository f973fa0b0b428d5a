"""Where an answer came from: ``provenance(result)`` for anything the chain returned or raised."""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["AttemptRecord", "Provenance", "Source", "provenance"]


class Source(StrEnum):
    """Who produced the answer."""

    UPSTREAM = "upstream"
    FALLBACK_MODEL = "fallback_model"
    FALLBACK_CLIENT = "fallback_client"
    CACHE = "cache"
    CANNED = "canned"
    FUNCTION = "function"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt on one target and how it ended."""

    target: str
    model: str | None
    attempt: int
    verdict: str
    status: int | None
    duration: float


@dataclass(frozen=True, slots=True)
class Provenance:
    """The honest story of one call.

    ``source`` is who answered (None on an error: nobody did); ``model`` the model that
    actually answered (for canned and function answers, the synthetic name they carry);
    ``requested_model`` what the caller asked for; ``reason`` the verdict that made the chain
    leave the primary (None when the primary answered); ``attempts`` every attempt on every
    target, in order, the answering one included; ``rescue`` how a broken stream was finished.
    """

    source: Source | None
    model: str | None
    requested_model: str | None
    target: str | None
    reason: str | None = None
    attempts: tuple[AttemptRecord, ...] = field(default=())
    #: How a stream that broke mid-answer was finished by ``target``: ``"continued"`` (from the
    #: delivered text as a prefill) or ``"spliced"`` (asked again, joined where the caller was).
    rescue: str | None = None

    @property
    def retried(self) -> bool:
        """True when the answering target needed more than one attempt."""
        return sum(1 for a in self.attempts if a.target == self.target) > 1


_by_id: dict[int, tuple[Provenance, weakref.ref[Any]]] = {}
_lock = threading.Lock()


def _forgetter(key: int) -> Any:
    def forget(ref: weakref.ref[Any]) -> None:
        with _lock:
            entry = _by_id.get(key)
            if entry is not None and entry[1] is ref:
                del _by_id[key]

    return forget


def attach(obj: Any, record: Provenance) -> None:
    """Remember ``record`` for ``obj`` for as long as ``obj`` lives (by identity, weakly).

    Objects that cannot be weakly referenced (built-in exceptions) carry it as an attribute.
    """
    key = id(obj)
    try:
        ref = weakref.ref(obj, _forgetter(key))
    except TypeError:
        # Objects of builtin types (str, bytes) can carry nothing: they go without.
        with contextlib.suppress(AttributeError, TypeError):
            obj.__resilient_provenance__ = record
        return
    with _lock:
        _by_id[key] = (record, ref)


def provenance(obj: object) -> Provenance | None:
    """The :class:`Provenance` of a response, stream, raw response or error the chain produced.

    None for objects that did not come out of a resilient client.
    """
    entry = _by_id.get(id(obj))
    if entry is not None and entry[1]() is obj:
        return entry[0]
    found: Provenance | None = getattr(obj, "__resilient_provenance__", None)
    return found
