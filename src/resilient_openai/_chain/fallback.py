"""The fallback layer: when the primary cannot answer, walk the route until something does.

Live rungs (another model, another provider) go through the inner chain, each with its own
retry rules and breaker; local rungs (the cache, a canned text, a user function) answer at once,
even after the deadline. The verdict of the failure decides whether to fall back at all
(:func:`~resilient_openai._fallback.plan.next_move`). Every answer leaves with its provenance.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .._classify import Verdict, classify
from .._errors import DeadlineExceededError, RequestRejectedError
from .._fallback.plan import Move, is_live, next_move, route_for
from .._policy import FallbackStep, Route
from .._provenance import Source
from ._call import AsyncHandler, Call, Handler

if TYPE_CHECKING:
    from .._engine import Engine
    from .._runtime import FallbackFunction

__all__ = ["AsyncFallback", "SyncFallback"]

_log = logging.getLogger(__name__)

_PRIMARY = FallbackStep.model_construct(kind="model")  # the caller's own model: a sentinel, never validated


def _initial_rungs(call: Call, route: Route) -> list[FallbackStep]:
    if call.oversized:
        if route.context_model is None:
            raise RequestRejectedError(
                f"the prompt is larger than {call.requested_model}'s context window",
                rule="context_window", operation=call.operation, model=call.requested_model,
            )  # fmt: skip
        return [FallbackStep(kind="model", model=route.context_model)]
    return [_PRIMARY, *route.steps]


def _telling(previous: BaseException | None, latest: BaseException) -> BaseException:
    """The error worth raising if nothing answers: a real failure beats running out of time."""
    if previous is not None and isinstance(latest, DeadlineExceededError):
        return previous
    return latest


def _failure(call: Call, exc: BaseException) -> Verdict:
    last = call.last_failure
    return last.verdict if last is not None else classify(exc).verdict


def _after_failure(
    engine: Engine, call: Call, exc: BaseException, route: Route, rungs: list[FallbackStep], index: int
) -> tuple[list[FallbackStep], Verdict]:
    """The rungs left to try after a live failure (raises ``exc`` when nothing should be tried)."""
    verdict = _failure(call, exc)
    move = next_move(verdict, route)
    if move is Move.RAISE:
        raise engine.give_up(call, exc)
    if move is Move.CONTEXT:
        return [FallbackStep(kind="model", model=route.context_model)], verdict
    if move is Move.CONTENT:
        assert route.content_policy is not None
        return [route.content_policy], verdict
    return rungs[index + 1 :], verdict


class SyncFallback:
    """Walks a call's fallback route (threads)."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __call__(self, call: Call, next: Handler) -> Any:
        engine = self._engine
        route = route_for(engine.policy.fallback, call.requested_model)
        cache_key = engine.cache_key(call, route)
        if cache_key is not None and engine.policy.cache.read_through:
            hit = engine.cached(cache_key)
            if hit is not None:
                return engine.serve_sync(call, hit[0], Source.CACHE, hit[1], reason=None)
        rungs = _initial_rungs(call, route)
        error: BaseException | None = None
        reason: Verdict | None = None
        index = 0
        while index < len(rungs):
            step = rungs[index]
            if is_live(step):
                call.has_fallback = index + 1 < len(rungs)
                call.last_failure = None
                try:
                    call.target = engine.live_target(call, step, primary=step is _PRIMARY)
                    result = next(call)
                except Exception as exc:
                    error = _telling(error, exc)
                    rungs, verdict = _after_failure(engine, call, exc, route, rungs, index)
                    reason = reason or verdict
                    index = 0
                    continue
                watch = call.stream_watch
                if watch is not None and engine.policy.fallback.continuation:
                    watch.continue_sync = _sync_continuation(engine, call, next, rungs[index + 1 :], result)
                return engine.delivered(call, result, step is _PRIMARY, cache_key, reason)
            local = engine.local_answer(call, step, cache_key, reason)
            if local is not None:
                answer, source, model = local
                if source is Source.FUNCTION:
                    text = _guarded(_run_sync, engine.runtime.functions[step.function or ""], call, reason)
                    answer = engine.function_answer(call, text) if text is not None else None
                if answer is not None:
                    return engine.serve_sync(call, answer, source, model, reason=reason)
            index += 1
        assert error is not None
        failure = engine.give_up(call, error)
        try:
            raise failure
        finally:
            del failure, error  # the traceback holds this frame: break the cycle for the GC


class AsyncFallback:
    """Walks a call's fallback route (asyncio tasks)."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def __call__(self, call: Call, next: AsyncHandler) -> Any:
        engine = self._engine
        route = route_for(engine.policy.fallback, call.requested_model)
        cache_key = engine.cache_key(call, route)
        if cache_key is not None and engine.policy.cache.read_through:
            hit = engine.cached(cache_key)
            if hit is not None:
                return await engine.serve_async(call, hit[0], Source.CACHE, hit[1], reason=None)
        rungs = _initial_rungs(call, route)
        error: BaseException | None = None
        reason: Verdict | None = None
        index = 0
        while index < len(rungs):
            step = rungs[index]
            if is_live(step):
                call.has_fallback = index + 1 < len(rungs)
                call.last_failure = None
                try:
                    call.target = engine.live_target(call, step, primary=step is _PRIMARY)
                    result = await next(call)
                except Exception as exc:
                    error = _telling(error, exc)
                    rungs, verdict = _after_failure(engine, call, exc, route, rungs, index)
                    reason = reason or verdict
                    index = 0
                    continue
                watch = call.stream_watch
                if watch is not None and engine.policy.fallback.continuation:
                    watch.continue_async = _async_continuation(engine, call, next, rungs[index + 1 :], result)
                return engine.delivered(call, result, step is _PRIMARY, cache_key, reason)
            local = engine.local_answer(call, step, cache_key, reason)
            if local is not None:
                answer, source, model = local
                if source is Source.FUNCTION:
                    text = await _aguarded(engine.runtime.functions[step.function or ""], call, reason)
                    answer = engine.function_answer(call, text) if text is not None else None
                if answer is not None:
                    return await engine.serve_async(call, answer, source, model, reason=reason)
            index += 1
        assert error is not None
        failure = engine.give_up(call, error)
        try:
            raise failure
        finally:
            del failure, error  # the traceback holds this frame: break the cycle for the GC


def _guarded(
    run: Callable[[FallbackFunction, Call, Verdict | None], str],
    function: FallbackFunction,
    call: Call,
    reason: Verdict | None,
) -> str | None:
    """The function's text, or None when it raised: a failing fallback is skipped, never raised."""
    try:
        return run(function, call, reason)
    except Exception:
        _log.exception("fallback function %r failed; trying the next rung", function)
        return None


async def _aguarded(function: FallbackFunction, call: Call, reason: Verdict | None) -> str | None:
    """The asyncio twin of :func:`_guarded`."""
    try:
        return await _run_async(function, call, reason)
    except Exception:
        _log.exception("fallback function %r failed; trying the next rung", function)
        return None


def _run_sync(function: FallbackFunction, call: Call, reason: Verdict | None) -> str:
    produced = function(dict(call.body or {}), str(reason))
    if inspect.isawaitable(produced):
        raise TypeError("an async fallback function cannot answer a sync client; give a sync function")
    return str(produced)


async def _run_async(function: FallbackFunction, call: Call, reason: Verdict | None) -> str:
    produced = function(dict(call.body or {}), str(reason))
    if inspect.isawaitable(produced):
        produced = await produced
    return str(produced)


def _sync_continuation(
    engine: Engine, call: Call, next: Handler, later: list[FallbackStep], result: Any
) -> Callable[[str], Iterable[bytes] | None]:
    """Continue a stream cut mid-answer on the next target that declared it accepts a prefill."""

    def go(partial: str) -> Iterable[bytes] | None:
        for step in later:
            sub = engine.continuation_call(call, step, partial)
            if sub is None:
                continue
            try:
                more = next(sub)
            except Exception:
                continue
            body = engine.continued(call, sub, result, more)
            if body is not None:
                return cast("Iterable[bytes]", body)
        return None

    return go


def _async_continuation(
    engine: Engine, call: Call, next: AsyncHandler, later: list[FallbackStep], result: Any
) -> Callable[[str], Awaitable[AsyncIterable[bytes] | None]]:
    """The asyncio twin of :func:`_sync_continuation`."""

    async def go(partial: str) -> AsyncIterable[bytes] | None:
        for step in later:
            sub = engine.continuation_call(call, step, partial)
            if sub is None:
                continue
            try:
                more = await next(sub)
            except Exception:
                continue
            body = engine.continued(call, sub, result, more)
            if body is not None:
                return cast("AsyncIterable[bytes]", body)
        return None

    return go
