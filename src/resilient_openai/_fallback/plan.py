"""Which fallback answers a failed call, decided from the verdict alone. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from .._classify import Verdict
from .._policy import FallbackPolicy, FallbackStep, Route

__all__ = ["Move", "is_live", "next_move", "route_for"]

_EMPTY = Route()

#: Outages: the target could not answer now, another one may.
_OUTAGE = frozenset(
    {
        Verdict.RATE_LIMITED,
        Verdict.QUOTA_EXHAUSTED,
        Verdict.SERVER_ERROR,
        Verdict.REQUEST_TIMEOUT,
        Verdict.CONFLICT,
        Verdict.CONNECTION_ERROR,
        Verdict.TIMEOUT,
        Verdict.CIRCUIT_OPEN,
        Verdict.STREAM_INTERRUPTED,
    }
)


class Move(Enum):
    """What the fallback layer does after a target failed."""

    NEXT = "next"  # try the next rung of the route
    CONTEXT = "context"  # go to the route's larger-context model
    CONTENT = "content"  # answer with the route's content-policy step
    RAISE = "raise"  # the failure is the answer


def route_for(policy: FallbackPolicy, model: str | None) -> Route:
    """The route for ``model``: its own, else the ``"*"`` route, else no fallback at all."""
    routes: Mapping[str, Route] = policy.routes
    if not routes:
        return _EMPTY
    route = routes.get(model or "")
    if route is None:
        route = routes.get("*", _EMPTY)
    return route


def next_move(verdict: Verdict, route: Route) -> Move:
    """Decide from the verdict: outages fall back, the caller's own mistakes never do.

    ``context_length_exceeded`` goes to the route's larger-context model when there is one;
    content filtering propagates the provider's reason unless a content-policy step exists.
    """
    if verdict in _OUTAGE:
        return Move.NEXT
    if verdict is Verdict.CONTEXT_LENGTH_EXCEEDED and route.context_model is not None:
        return Move.CONTEXT
    if verdict is Verdict.CONTENT_FILTERED and route.content_policy is not None:
        return Move.CONTENT
    return Move.RAISE


def is_live(step: FallbackStep) -> bool:
    """A live step calls a model; the others (cache, canned, function) answer locally."""
    return step.kind in ("model", "target")
