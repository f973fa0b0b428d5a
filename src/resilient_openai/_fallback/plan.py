"""Which fallback answers a failed call: the walk over a route, decided from verdicts alone. Pure.

:func:`walk` is one generator that both the sync and the asyncio fallback layer drive (the way
httpx's ``auth_flow`` serves both clients): it yields :class:`Send` ("ask this live step; tell me
the verdict if it failed") and :class:`Serve` ("answer from this local step if it can"), and
returns when nothing is left to try. The drivers only do the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from enum import Enum
from typing import NamedTuple

from .._classify import Verdict, verdicts_where
from .._policy import FallbackPolicy, FallbackStep, Route

__all__ = ["PRIMARY", "Move", "Send", "Serve", "Walk", "is_live", "next_move", "route_for", "walk"]

_EMPTY = Route()
#: The step that stands for the caller's own target and model: a sentinel, never validated
#: (a model step in a policy must name its model).
PRIMARY = FallbackStep.model_construct(kind="model")

#: Outages: the target could not answer now, another one may.
_OUTAGE = verdicts_where("outage")


class Send(NamedTuple):
    """Ask a live step (``PRIMARY``, a model or a target); the driver sends back the failure's
    verdict, or stops the walk when it answered. ``later``: the steps after it."""

    step: FallbackStep
    later: tuple[FallbackStep, ...]


class Serve(NamedTuple):
    """Answer from a local step (cache, canned, function) if it can; the driver sends back None
    when it could not, or stops the walk when it answered. ``reason`` left the primary."""

    step: FallbackStep
    reason: Verdict | None


#: What :func:`walk` is: yields moves, is sent verdicts (or None), returns when nothing answered.
Walk = Generator[Send | Serve, Verdict | None, None]


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

    ``context_length_exceeded`` goes to a model with room for the prompt (see :func:`walk`);
    content filtering propagates the provider's reason unless a content-policy step exists.
    """
    if verdict in _OUTAGE:
        return Move.NEXT
    if verdict is Verdict.CONTEXT_LENGTH_EXCEEDED:
        return Move.CONTEXT
    if verdict is Verdict.CONTENT_FILTERED and route.content_policy is not None:
        return Move.CONTENT
    return Move.RAISE


def is_live(step: FallbackStep) -> bool:
    """A live step calls a model; the others (cache, canned, function) answer locally."""
    return step.kind in ("model", "target")


def _roomier(
    route: Route, after: list[FallbackStep], roomy: Callable[[FallbackStep], bool]
) -> list[FallbackStep]:
    """Where a prompt too long for its model goes: the route's ``context_model``, else the live
    steps left whose window is larger or unknown (``roomy``). Never the cache or a canned text:
    those would tell the caller the service is busy when the request is too long."""
    if route.context_model is not None:
        return [FallbackStep(kind="model", model=route.context_model)]
    return [step for step in after if is_live(step) and roomy(step)]


def walk(
    route: Route,
    *,
    context_first: bool = False,
    roomy: Callable[[FallbackStep], bool] = bool,
    model: str | None = None,
) -> Walk:
    """The steps to try, in order, for a call on ``route``; see the module docs for the protocol.

    ``context_first``: the prompt is known to exceed the model's window, so the walk starts where
    a context-length error would go. After a failure, the verdict decides (:func:`next_move`):
    outages go on down the route; a context-length error goes to ``context_model``, or else to
    the remaining model and target steps with room for it (``roomy(step)``: a larger or unknown
    window); a content-filtered one goes to the ``content_policy`` step; anything else ends the
    walk (the failure is the answer). ``model`` is the caller's model, which ``PRIMARY`` asks.
    """
    steps: list[FallbackStep] = (
        _roomier(route, list(route.steps), roomy) if context_first else [PRIMARY, *route.steps]
    )
    reason: Verdict | None = None
    index = 0
    while index < len(steps):
        step = steps[index]
        if not is_live(step):
            yield Serve(step, reason)
            index += 1
            continue
        verdict = yield Send(step, tuple(steps[index + 1 :]))
        if verdict is None:
            return
        reason = reason or verdict
        move = next_move(verdict, route)
        if move is Move.RAISE:
            return
        if move is Move.CONTEXT:
            steps, index = _roomier(route, steps[index + 1 :], roomy), 0
            asked = step.model or model  # PRIMARY stands for the caller's ``model``
            if steps and step.kind == "model" and steps[0].model == asked:
                steps = steps[1:]  # the context model itself said the prompt is too long
        elif move is Move.CONTENT:
            assert route.content_policy is not None
            steps, index = [route.content_policy], 0
        else:
            index += 1
