"""The middleware chain: each layer is ``(call, next) -> result``; first listed is outermost.

The order is fixed here, in one place, and pinned by a test::

    validate -> fallback -> retry -> breaker -> attempt -> chaos -> terminal (the SDK call)

Validation first, so a request that cannot succeed never costs an attempt or touches a breaker.
Fallback outside retry, so it answers only after a target's own retries are spent (or its
circuit is open). Retry outside the breaker, so the breaker sees every attempt and an open
circuit stops the retries at once. The attempt layer sets per-attempt timeouts and watches
streams. The chaos switch sits inside the breaker, so a forced failure looks like a real one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Any, Protocol

from ._call import AsyncHandler, Call, Handler

__all__ = ["AsyncMiddleware", "Middleware", "build_async_chain", "build_chain"]


class Middleware(Protocol):
    """A sync layer: pass ``call`` on with ``next(call)``, or answer it, or raise."""

    def __call__(self, call: Call, next: Handler) -> Any: ...


class AsyncMiddleware(Protocol):
    """An asyncio layer: ``await next(call)``, or answer, or raise."""

    def __call__(self, call: Call, next: AsyncHandler) -> Awaitable[Any]: ...


def build_chain(middlewares: Sequence[Middleware], terminal: Handler) -> Handler:
    """Fold ``middlewares`` around ``terminal``, the first one outermost. Built once, then frozen."""
    handler = terminal
    for middleware in reversed(middlewares):
        handler = partial(middleware, next=handler)
    return handler


def build_async_chain(middlewares: Sequence[AsyncMiddleware], terminal: AsyncHandler) -> AsyncHandler:
    """The asyncio twin of :func:`build_chain`."""
    handler = terminal
    for middleware in reversed(middlewares):
        handler = partial(middleware, next=handler)
    return handler
