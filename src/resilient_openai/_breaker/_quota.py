"""Quota belongs to a credential: who is out of quota on which target, and until when.

An ``insufficient_quota`` answer says one account has nothing left to spend; the target itself is
healthy and every other key calling it should keep getting through. So the breaker ignores that
verdict for its shared state (:func:`~resilient_openai._breaker._state.outcome_of`), and this
ledger remembers ``(target, credential) -> until`` instead: for ``quota_break`` seconds, calls with
that credential to that target are refused at once, like calls to an open circuit.

The credential is an opaque tenant scope (an HMAC of the credentials and tenant selectors a
request carries, never the key itself). The ledger is a ``cachetools.TLRUCache`` timed by the
injected clock: each entry expires at its own ``until``, and past ``maxsize`` entries the expired
ones go first, then the least recently used. Forgetting an entry early only costs that credential
one more request to learn its quota is still empty. One ``threading.Lock`` guards the cache (it is
not thread-safe); it is held for a dict operation, never across a call.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cachetools import TLRUCache

from .._classify import Verdict
from .._errors import CircuitOpenError
from ..observe.events import CallRejected

if TYPE_CHECKING:
    from .._clock import Clock
    from .._policy import BreakerPolicy
    from ..observe.events import EventBus

__all__ = ["MAX_EXHAUSTED", "QuotaLedger", "quota_hold"]

#: Most (target, credential) pairs remembered as out of quota at once.
MAX_EXHAUSTED = 4096


def quota_hold(verdict: Verdict, policy: BreakerPolicy) -> float:
    """How long (seconds) an outcome keeps its credential out of its target: ``quota_break`` for
    quota exhaustion under an enabled policy, else 0 (nothing to remember)."""
    if verdict is not Verdict.QUOTA_EXHAUSTED or not policy.enabled:
        return 0.0
    return policy.quota_break


def _until(_key: object, until: float, _now: float) -> float:
    """A ledger entry expires at the time it holds."""
    return until


class QuotaLedger:
    """The credentials out of quota, per target, shared by every breaker of one client's chain."""

    __slots__ = ("_bus", "_clock", "_entries", "_lock", "active")

    def __init__(self, *, clock: Clock, bus: EventBus, maxsize: int = MAX_EXHAUSTED) -> None:
        self._clock = clock
        self._bus = bus
        self._entries: TLRUCache[tuple[str, str], float, float] = TLRUCache(
            maxsize, ttu=_until, timer=clock.now
        )
        self._lock = threading.Lock()
        #: Some credential may be held out: until then the gate asks nothing and computes no
        #: credential. A plain attribute, read without the lock on every call: a moment-old
        #: value only adds or skips one lookup while a hold begins or ends.
        self.active = False

    def exhausted(self, target: str, credential: str, hold: float) -> None:
        """``credential`` is out of quota on ``target`` for the next ``hold`` seconds."""
        with self._lock:
            self._entries[(target, credential)] = self._clock.now() + hold
            self.active = True

    def refusal(self, target: str, credential: str) -> CircuitOpenError | None:
        """The error refusing a call with ``credential`` to ``target`` (announced like an open
        circuit's rejection), or None when it may go."""
        with self._lock:
            entries = self._entries
            entries.expire()  # cheap when nothing expired
            until = entries.get((target, credential))
            self.active = bool(entries)
        if until is None:
            return None
        retry_after = max(until - self._clock.now(), 0.0)
        if self._bus:
            self._bus.emit(CallRejected(self._clock.wall(), target, retry_after))
        return CircuitOpenError(
            f"this credential is out of quota on '{target}'", breaker=target, retry_after=retry_after
        )

    def forget(self, target: str) -> None:
        """Let every credential call ``target`` again (an operator closed or reset its breaker)."""
        with self._lock:
            entries = self._entries
            for key in [key for key in entries if key[0] == target]:
                del entries[key]
            self.active = bool(entries)
