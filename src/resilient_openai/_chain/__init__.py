"""The middleware chain: each layer is made around the handler below it and called as
``layer(call) -> result``; first listed is outermost.

The order is :data:`ORDER`, one tuple for both flavours, pinned by a test::

    validate -> fallback -> retry -> breaker -> attempt -> chaos -> terminal (the SDK call)

Validation first, so a request that cannot succeed never costs an attempt or touches a breaker.
Fallback outside retry, so it answers only after a target's own retries are spent (or its
circuit is open). Retry outside the breaker, so the breaker sees every attempt and an open
circuit stops the retries at once. The attempt layer sets per-attempt timeouts and watches
streams. The chaos switch sits inside the breaker, so a forced failure looks like a real one.

Below the fallback layer, layers answer with an :class:`~._call.Outcome` value (the result, or
the error with its classification, made once); the fallback layer turns the last one into the
caller's result or error. Each layer gets its collaborators here, when the chain is built, and
never calls back up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from .. import _sdk
from .._breaker import BreakerRegistry
from .._budget import BudgetRegistry
from ..observe.events import EventBus
from ._call import Call
from ._delivery import Delivery
from ._targets import Targets
from .attempt import AsyncAttempt, SyncAttempt
from .breaker import AsyncBreakerGate, SyncBreakerGate
from .chaos import AsyncChaos, SyncChaos
from .fallback import AsyncFallback, SyncFallback, Walker
from .retry import AsyncRetry, SyncRetry
from .terminal import AsyncTerminal, SyncTerminal
from .validate import Validate

if TYPE_CHECKING:
    from .._fallback.cache import ResponseCache
    from .._fallback.shared_cache import SharedCache
    from .._policy import Policy
    from .._runtime import Runtime

__all__ = ["ORDER", "Chain", "operation_of"]

#: The layers, outermost first. The same order for the sync and the asyncio chain.
ORDER: Final = ("validate", "fallback", "retry", "breaker", "attempt", "chaos")

_operations: dict[str, str] = {}
_MAX_OPERATIONS = 256


def _is_resource_id(segment: str) -> bool:
    return any(ch.isdigit() for ch in segment) or len(segment) > 32


def operation_of(url: str) -> str:
    """``/chat/completions`` -> ``chat.completions``: the operation name used everywhere.

    Resource ids (``/responses/resp_123``) are dropped, so names stay few: they label metrics.
    """
    name = _operations.get(url)
    if name is None:
        parts = [
            seg for seg in url.split("?", 1)[0].strip("/").split("/") if seg and not _is_resource_id(seg)
        ]
        name = ".".join(parts) or "root"
        if len(_operations) < _MAX_OPERATIONS:
            _operations[url] = name
    return name


def _fold(makers: list[Callable[[Any], Any]], terminal: Callable[[Call], Any]) -> Callable[[Call], Any]:
    """Make each layer around the handler below it, the first one outermost. Built once, then
    frozen: each layer holds the next handler as a bound method, so passing a call down costs
    one call, not a partial's argument merging."""
    handler = terminal
    for make in reversed(makers):
        handler = make(handler).__call__
    return handler


@dataclass(frozen=True, slots=True, eq=False)
class Chain:
    """One resilient client's chain (shared by all its copies), with what operators inspect."""

    handler: Callable[[Call], Any]
    breakers: BreakerRegistry
    budgets: BudgetRegistry
    cache: ResponseCache | None
    shared_cache: SharedCache | None
    _policy: Policy
    _runtime: Runtime

    @classmethod
    def build(cls, policy: Policy, runtime: Runtime, *, is_async: bool) -> Chain:
        """Make every layer with its collaborators and fold them in :data:`ORDER`."""
        clock = runtime.clock
        bus = EventBus(runtime.listeners)
        link = None
        if policy.shared is not None:
            from .._breaker._redis import connect  # the redis extra, only when asked for

            link = connect(policy.shared)
        breakers = BreakerRegistry(policy.breaker, clock=clock, bus=bus, link=link)
        # One retry budget per target, as many as there may be breakers.
        budgets = BudgetRegistry(clock=clock, limit=policy.breaker.max_breakers)
        delivery = Delivery(policy, clock=clock, bus=bus, shared=runtime.shared_cache)
        walker = Walker(
            policy.fallback, policy.validation, functions=runtime.functions, delivery=delivery,
            targets=Targets(policy, runtime, breakers, budgets, is_async=is_async),
        )  # fmt: skip
        forced = policy.fallback.forced_failures
        pick = 1 if is_async else 0
        # Each maker takes the handler below it; None: the layer is off.
        made: Mapping[str, Callable[[Any], Any] | None] = {
            "validate": Validate if policy.validation.enabled else None,
            "fallback": partial((SyncFallback, AsyncFallback)[pick], walker=walker),
            "retry": partial((SyncRetry, AsyncRetry)[pick], clock=clock, bus=bus),
            "breaker": partial((SyncBreakerGate, AsyncBreakerGate)[pick], clock=clock, quota=breakers.quota),
            "attempt": partial((SyncAttempt, AsyncAttempt)[pick], clock=clock, bus=bus),
            "chaos": partial((SyncChaos, AsyncChaos)[pick], forced=forced) if forced else None,
        }
        makers = [maker for name in ORDER if (maker := made[name]) is not None]
        terminal = (SyncTerminal, AsyncTerminal)[pick](clock)
        return cls(
            _fold(makers, terminal), breakers, budgets, delivery.cache, delivery.shared, policy, runtime
        )

    def close(self) -> None:
        """Release what the chain holds outside the process: the shared breakers' link (its last
        batched reports sent first, within ``shared.timeout``) and the shared cache's threads.
        Blocking; the client's ``close()`` calls it (an asyncio client, on a worker thread)."""
        link = self.breakers.link
        if link is not None:
            link.close()
        if self.shared_cache is not None:
            self.shared_cache.close()

    def call(self, client: Any, cast_to: Any, options: Any, stream: bool, stream_cls: Any) -> Any:
        """Run one SDK request made through ``client`` (a coroutine for an asyncio client)."""
        body = options.json_data
        if not isinstance(body, Mapping):
            body = None
        model = body.get("model") if body is not None else None
        now = self._runtime.clock.now()
        made = Call(
            operation=operation_of(options.url),
            requested_model=model if isinstance(model, str) else None,
            body=body,
            cast_to=cast_to,
            options=options,
            caller_options=options,
            stream=stream,
            stream_cls=stream_cls,
            client=client,
            started=now,
            deadline=now + self._policy.timeouts.total,
            caller_timeout=_sdk.caller_limit(options, client),
        )
        result: Any | Awaitable[Any] = self.handler(made)
        return result
