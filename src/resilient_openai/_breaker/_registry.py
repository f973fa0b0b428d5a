"""One breaker per target, created on first use and kept within ``max_breakers``.

A breaker's name is its key; :func:`default_key` names a target after its endpoint and model,
e.g. ``"api.openai.com/v1:gpt-4o"``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

from ._breaker import BreakerSnapshot, CircuitBreaker
from ._quota import QuotaLedger
from ._shared import SharedCircuitBreaker
from ._state import CLOSED, ISOLATED

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._clock import Clock
    from .._policy import BreakerPolicy
    from ..observe.events import EventBus
    from ._redis import RedisLink, Reply

__all__ = ["AnyBreaker", "BreakerRegistry", "default_key"]

#: A target's breaker: in-process, or shared through Redis.
AnyBreaker: TypeAlias = CircuitBreaker | SharedCircuitBreaker


def default_key(base_url: str, model: str | None) -> str:
    """A readable breaker name: the base URL's host (and port) and path, then ``:model``.

    No scheme, no credentials, no query or fragment, so the name is safe to log:
    ``default_key("https://user:pw@api.openai.com/v1/?k=1", "gpt-4o") == "api.openai.com/v1:gpt-4o"``.
    """
    parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal: keep the brackets so the port stays readable
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: leave it out rather than fail
        port = None
    if port is not None:
        host = f"{host}:{port}"
    endpoint = host + parts.path.rstrip("/")
    return f"{endpoint}:{model}" if model else endpoint


#: Which breakers to forget first: closed ones (nothing lost), tripped ones (1), and isolated ones,
#: an operator's decision, last.
_EVICTION_RANK = {CLOSED: 0, ISOLATED: 2}


class BreakerRegistry:
    """The breakers of one client, by key, bounded to ``policy.max_breakers``.

    Past the bound the least recently used breaker is dropped, preferring closed ones, then
    open / half-open ones, and isolated ones only when nothing else is left. Dropping only
    forgets the registry's reference: a caller still holding the breaker keeps using it, and
    the next :meth:`get` for that key starts a fresh one. Thread-safe; the lock covers the dict
    operations only, never a breaker's own work or its listeners.
    """

    def __init__(
        self, policy: BreakerPolicy, *, clock: Clock, bus: EventBus, link: RedisLink | None = None
    ) -> None:
        self.policy = policy
        #: Redis, when breakers are shared (``[shared]``); None: each process keeps its own.
        self.link = link
        self._clock = clock
        self._bus = bus
        # OrderedDict rather than cachetools.LRUCache: choosing the victim by state means walking
        # the recency order, which LRUCache keeps private.
        self._breakers: OrderedDict[str, AnyBreaker] = OrderedDict()
        self._lock = threading.Lock()
        #: Bumped whenever a breaker is dropped: a holder of breakers taken from :meth:`get`
        #: earlier (a memo of targets) must take them again when it changed.
        self.epoch = 0
        #: The credentials out of quota on these breakers' targets (quota is no breaker failure).
        self.quota = QuotaLedger(clock=clock, bus=bus)

    def get(
        self,
        key: str,
        policy: BreakerPolicy | None = None,
        *,
        within: float | None = None,
        later: bool = False,
    ) -> AnyBreaker:
        """The breaker for ``key``, created with ``policy`` (default: the registry's) on first use.

        A per-target ``policy`` applies when the breaker is created; a breaker that already
        exists keeps the policy it was created with. A shared breaker starts from the shared
        state, read waiting at most ``within`` seconds (None: the link's ``timeout``; 0: not
        read, closed until the next refresh): the part of ``timeout`` its call has left.
        ``later``: not waited for here; the breaker's first :meth:`acquire` waits for the read
        (see :meth:`SharedCircuitBreaker.read_soon`), which an asyncio caller makes off its loop.
        """
        policy = policy or self.policy
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                self._breakers.move_to_end(key)
                return breaker
        link = self.link
        # Read with no lock held; a racing get for the same key may read too, and one of them wins.
        reply = None
        if within is None and link is not None:
            within = link.shared.timeout
        if link is not None and not later:
            reply = link.read(key, policy, within or 0.0)
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                self._breakers.move_to_end(key)
                return breaker
            breaker = self._make(key, policy, reply)
            self._breakers[key] = breaker
            if len(self._breakers) > self.policy.max_breakers:
                self._evict_locked(keep=key)
        if later and isinstance(breaker, SharedCircuitBreaker):
            # Started with no lock held: a read that is already over adopts at once (listeners).
            breaker.read_soon(within or 0.0)
        return breaker

    def _make(self, key: str, policy: BreakerPolicy, reply: Reply | None) -> AnyBreaker:
        link = self.link
        if link is not None:
            return SharedCircuitBreaker(key, policy, clock=self._clock, bus=self._bus, link=link, reply=reply)
        return CircuitBreaker(key, policy, clock=self._clock, bus=self._bus)

    def _evict_locked(self, *, keep: str) -> None:
        """Drop one breaker (never ``keep``, the one just created). Caller holds the lock."""
        victim, best = keep, 3
        for key, breaker in self._breakers.items():  # least recently used first
            # One read of the breaker's state, without its lock: the answer may be a moment old,
            # which only makes eviction slightly less choosy, never unsafe.
            rank = _EVICTION_RANK.get(breaker.state, 1)
            if rank < best and key != keep:
                victim, best = key, rank
                if rank == 0:
                    break
        del self._breakers[victim]
        self.epoch += 1

    def _existing(self, key: str) -> AnyBreaker:
        with self._lock:
            breaker = self._breakers.get(key)
        if breaker is None:
            raise KeyError(f"no breaker named {key!r}")
        return breaker

    def isolate(self, key: str) -> None:
        """Force ``key``'s circuit open until closed or reset; creates the breaker if needed.

        Creating it lets an operator isolate a target before it is first called.
        """
        self.get(key).isolate()

    def close(self, key: str) -> None:
        """Close ``key``'s circuit now and let every credential out of quota on it call again.
        Raises ``KeyError`` for an unknown key."""
        self._existing(key).close()
        self.quota.forget(key)

    def reset(self, key: str) -> None:
        """Make ``key``'s breaker fresh and closed, its quota holds forgotten. Raises
        ``KeyError`` for an unknown key."""
        self._existing(key).reset()
        self.quota.forget(key)

    def snapshot(self) -> list[BreakerSnapshot]:
        """A snapshot of every breaker, least recently used first."""
        return [breaker.snapshot() for breaker in self]

    def __iter__(self) -> Iterator[AnyBreaker]:
        """The breakers (a copy of the list: safe while others create or evict)."""
        with self._lock:
            breakers = list(self._breakers.values())
        return iter(breakers)

    def __len__(self) -> int:
        # A single dict read: atomic without the lock.
        return len(self._breakers)

    def __contains__(self, key: object) -> bool:
        return key in self._breakers
