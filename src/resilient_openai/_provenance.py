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


class _Held(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to an object that carries a provenance, knowing its own key."""

    __slots__ = ("key", "record")
    key: int
    record: Provenance


_by_id: dict[int, _Held] = {}
_lock = threading.Lock()


def _forget(ref: _Held) -> None:
    """The object behind ``ref`` is gone: drop its entry (unless a newer one took the key)."""
    with _lock:
        if _by_id.get(ref.key) is ref:
            del _by_id[ref.key]


def attach(obj: Any, record: Provenance) -> None:
    """Remember ``record`` for ``obj`` for as long as ``obj`` lives (by identity, weakly).

    Objects that cannot be weakly referenced (built-in exceptions) carry it as an attribute.
    """
    try:
        ref = _Held(obj, _forget)
    except TypeError:
        # Objects of builtin types (str, bytes) can carry nothing: they go without.
        with contextlib.suppress(AttributeError, TypeError):
            obj.__resilient_provenance__ = record
        return
    ref.key = key = id(obj)
    ref.record = record
    with _lock:
        _by_id[key] = ref


def provenance(obj: object) -> Provenance | None:
    """The :class:`Provenance` of a response, stream, raw response or error the chain produced.

    None for objects that did not come out of a resilient client.
    """
    held = _by_id.get(id(obj))
    if held is not None and held() is obj:
        return held.record
    found: Provenance | None = getattr(obj, "__resilient_provenance__", None)
    return found
