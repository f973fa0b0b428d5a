"""The fallback layer: when the primary cannot answer, walk the route until something does.

The walk itself is one pure generator (:func:`~resilient_openai._fallback.plan.walk`); the two
drivers below only carry out its moves. Live steps (another model, another provider) go through
the inner chain, each with its own retry rules and breaker; local steps (the cache, a canned
reply, a user function) answer at once, even after the deadline, when they can answer the
request as asked (:mod:`~resilient_openai._fallback.shape`); when one was skipped for that and
nothing answered, the caller gets :class:`~resilient_openai.UnanswerableError`. Every answer
leaves with its provenance.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import AsyncIterable, Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx2

from .. import _sdk
from .._classify import Verdict
from .._errors import DeadlineExceededError, IncompleteStreamError, RequestRejectedError, UnanswerableError
from .._fallback.plan import PRIMARY, Send, Serve, Walk, is_live, route_for, walk
from .._fallback.shape import Shape, misfit, refusal, shape_of
from .._fallback.splice import Splice, SpliceFailed
from .._validate import context_window, oversized
from ._call import AsyncHandler, Call, Handler, Outcome
from ._delivery import interrupted
from ._stream import AsyncJoined, Joined, splice_chunk
from ._watch import StreamHooks

if TYPE_CHECKING:
    from .._policy import FallbackPolicy, FallbackStep, Route, ValidationPolicy
    from .._runtime import FallbackFunction
    from ._delivery import Delivery, LocalAnswer
    from ._targets import Targets

__all__ = ["AsyncFallback", "SyncFallback", "Walker"]

_log = logging.getLogger(__name__)


class Walker:
    """What both drivers share: the route, the targets, delivery, and the walk's bookkeeping."""

    __slots__ = ("_functions", "_policy", "_rescue", "_targets", "_validation", "delivery")

    def __init__(
        self,
        policy: FallbackPolicy,
        validation: ValidationPolicy,
        *,
        targets: Targets,
        delivery: Delivery,
        functions: Mapping[str, FallbackFunction],
    ) -> None:
        self._policy = policy
        self._validation = validation
        self._targets = targets
        self.delivery = delivery
        self._functions = functions
        self._rescue = policy.continuation

    def start(self, call: Call) -> tuple[str | None, Walk]:
        """The call's cache key and the walk over its route."""
        route = route_for(self._policy, call.requested_model)
        roomy = self._roomy(call)
        oversized = self._oversized(call, route, roomy)
        moves = walk(route, context_first=oversized, roomy=roomy, model=call.requested_model)
        return self.delivery.cache_key(call, route), moves

    @staticmethod
    def shape(call: Call, known: Shape | None) -> Shape:
        """The shape of answer the call asks for (``known``, once worked out): only a local step
        needs it, so a call its primary answers never works it out."""
        return known if known is not None else shape_of(call.operation, call.body)

    @staticmethod
    def refused(step: FallbackStep, shape: Shape, declined: list[str]) -> bool:
        """Whether ``step`` cannot answer a request of ``shape`` (noted in ``declined``)."""
        why = refusal(step, shape)
        if why is not None:
            declined.append(f"{step.kind}: {why}")
        return why is not None

    def from_function(
        self, call: Call, produced: object, shape: Shape, declined: list[str]
    ) -> LocalAnswer | None:
        """The answer a function's text makes, when the function answered and its text fits."""
        if produced is None:
            declined.append("function: declined")
            return None
        text = str(produced)
        why = misfit(shape, text)
        if why is not None:
            declined.append(f"function: {why}")
            return None
        return self.delivery.from_function(call, text)

    def _roomy(self, call: Call) -> Callable[[FallbackStep], bool]:
        """Whether a step's model has a larger (or unknown) context window than the caller's."""
        validation, targets = self._validation, self._policy.targets
        if not validation.context_windows:
            return _unknown_window  # no window is known: every model may have room
        own = context_window(validation, call.requested_model)

        def roomy(step: FallbackStep) -> bool:
            target = targets.get(step.target or "") if step.kind == "target" else None
            model = step.model if target is None else (target.model or call.requested_model)
            window = context_window(validation, model)
            return own is None or window is None or window > own

        return roomy

    def _oversized(self, call: Call, route: Route, roomy: Callable[[FallbackStep], bool]) -> bool:
        """Whether the prompt is known to exceed the model's window: then the walk starts where a
        context-length error would go, or the call is refused when nowhere has room."""
        if call.body is None or not oversized(self._validation, call.requested_model, call.body):
            return False
        if route.context_model is None and not any(is_live(step) and roomy(step) for step in route.steps):
            raise RequestRejectedError(
                f"the prompt is larger than {call.requested_model}'s context window",
                rule="context_window", operation=call.operation, model=call.requested_model,
            )  # fmt: skip
        return True

    def aim(self, call: Call, move: Send, key: str | None, continuation: StreamHooks | None) -> None:
        """Point the call at the target of ``move``, with what its stream should report."""
        call.target = self._targets.live(move.step, call)
        call.options = self._options_for(call, move.step)
        call.has_next = bool(move.later)
        call.hooks = (
            self.delivery.stream_hooks(call, key if move.step is PRIMARY else None, continuation)
            if call.stream
            else None
        )

    def give_up(self, call: Call, failure: Outcome | None, declined: list[str]) -> BaseException:
        """Nothing answered: the telling failure, with its provenance; or, when a local step
        could have answered but not as the request asks, :class:`UnanswerableError` saying why."""
        assert failure is not None
        if not declined:
            return self.delivery.give_up(call, failure)
        reason = "; ".join(declined)
        error = UnanswerableError(
            f"no fallback can answer this request as asked ({reason})",
            reason=reason, attempts=len(call.attempts), operation=call.operation, model=call.requested_model,
        )  # fmt: skip
        error.__cause__ = failure.error
        return self.delivery.give_up(call, failure, error)

    def function(self, step: FallbackStep) -> FallbackFunction:
        """The code a ``function`` step names (checked to exist when the client was made)."""
        return self._functions[step.function or ""]

    @staticmethod
    def _options_for(call: Call, step: FallbackStep) -> _sdk.Options:
        """The caller's options as ``step`` sends them: never the caller's key to another provider."""
        own = call.caller_options or call.options
        return _sdk.without_credentials(own) if step.kind == "target" else own

    def continuation_call(self, call: Call, step: FallbackStep, partial: str) -> Call | None:
        """A call asking ``step`` to continue ``partial`` as a prefill, when it declared it can.

        A prefill is never sent to a step that did not declare ``accepts_prefill``.
        """
        if call.body is None:
            return None
        target = self._targets.live(step, call)
        if not (target.accepts_prefill or (step.kind == "model" and step.accepts_prefill)):
            return None
        messages = [*call.body.get("messages", ()), {"role": "assistant", "content": partial}]
        body = {**call.body, "messages": messages}
        options = _sdk.with_body(self._options_for(call, step), body)
        # has_next: a rescue asks each step once, a silent one is not waited on again.
        return dataclasses.replace(call, body=body, options=options, target=target, has_next=True, hooks=None)

    def regeneration_call(self, call: Call, step: FallbackStep) -> Call:
        """The same question, asked of ``step`` (its answer is spliced in where the caller is)."""
        target = self._targets.live(step, call)
        options = self._options_for(call, step)
        return dataclasses.replace(call, options=options, target=target, has_next=True, hooks=None)

    def rescued(self, call: Call, sub: Call, result: Any, how: str) -> None:
        """Another step is finishing the caller's stream: say so on it."""
        target = sub.target
        assert target is not None
        self.delivery.rescued(call, result, target, sub.model, Verdict.STREAM_INTERRUPTED, how)

    def wants_rescue(self, call: Call, move: Send) -> bool:
        """Whether a chat stream broken mid-answer on this move's target may be finished later."""
        return (
            self._rescue
            and call.stream
            and call.operation == "chat.completions"
            and any(is_live(step) for step in move.later)
        )


def _unknown_window(step: FallbackStep) -> bool:
    return True


def _refused_prefill(outcome: Outcome) -> bool:
    """A prefill answered by the step's own 4xx (it does not take one): asking it the plain
    question may still work; an outage means the step is down."""
    return outcome.judged.verdict is Verdict.CALLER_ERROR


def _telling(previous: Outcome | None, latest: Outcome) -> Outcome:
    """The failure worth raising if nothing answers: a real failure beats running out of time."""
    if previous is not None and isinstance(latest.error, DeadlineExceededError):
        return previous
    return latest


class SyncFallback:
    """Drives the fallback walk (threads)."""

    __slots__ = ("_next", "_walker")

    def __init__(self, next: Handler, walker: Walker) -> None:
        self._next = next
        self._walker = walker

    def __call__(self, call: Call) -> Any:
        next = self._next
        walker = self._walker
        delivery = walker.delivery
        key, moves = walker.start(call)
        hit = delivery.read_through(key, call)
        if hit is not None:
            return delivery.serve_sync(call, hit, None)
        failure: Outcome | None = None
        reason: Verdict | None = None
        reply: Verdict | None = None
        declined: list[str] = []
        shape: Shape | None = None
        while True:
            try:
                move = moves.send(reply)
            except StopIteration:
                break
            if isinstance(move, Serve):
                shape = walker.shape(call, shape)
                local = self._local(call, move, key, shape, declined)
                if local is not None:
                    return delivery.serve_sync(call, local, move.reason)
                reply = None
                continue
            later = _SyncRescue(walker, call, next, move.later) if walker.wants_rescue(call, move) else None
            walker.aim(call, move, key, later.hooks() if later is not None else None)
            outcome: Outcome = next(call)
            if outcome.error is None:
                if later is not None:
                    later.result = outcome.result
                return delivery.live(call, outcome, primary=move.step is PRIMARY, key=key, reason=reason)
            failure = _telling(failure, outcome)
            reply = outcome.judged.verdict
            reason = reason or reply
        error = walker.give_up(call, failure, declined)
        try:
            raise error
        finally:
            del error, failure  # the traceback holds this frame: break the cycle for the GC

    def _local(
        self, call: Call, move: Serve, key: str | None, shape: Shape, declined: list[str]
    ) -> LocalAnswer | None:
        walker = self._walker
        if walker.refused(move.step, shape, declined):
            return None
        if move.step.kind != "function":
            return walker.delivery.local(call, move.step, key, move.reason, shape)
        if not walker.delivery.answers_text(call):
            return None
        try:
            produced = walker.function(move.step)(dict(call.body or {}), str(move.reason))
            if inspect.isawaitable(produced):
                raise TypeError(
                    "an async fallback function cannot answer a sync client; give a sync function"
                )
        except Exception:
            _log.exception("fallback function %r failed; trying the next rung", move.step.function)
            return None
        return walker.from_function(call, produced, shape, declined)


class AsyncFallback:
    """Drives the fallback walk (asyncio tasks)."""

    __slots__ = ("_next", "_walker")

    def __init__(self, next: AsyncHandler, walker: Walker) -> None:
        self._next = next
        self._walker = walker

    async def __call__(self, call: Call) -> Any:
        next = self._next
        walker = self._walker
        delivery = walker.delivery
        key, moves = walker.start(call)
        hit = await delivery.read_through_async(key, call)
        if hit is not None:
            return await delivery.serve_async(call, hit, None)
        failure: Outcome | None = None
        reason: Verdict | None = None
        reply: Verdict | None = None
        declined: list[str] = []
        shape: Shape | None = None
        while True:
            try:
                move = moves.send(reply)
            except StopIteration:
                break
            if isinstance(move, Serve):
                shape = walker.shape(call, shape)
                local = await self._local(call, move, key, shape, declined)
                if local is not None:
                    return await delivery.serve_async(call, local, move.reason)
                reply = None
                continue
            later = _AsyncRescue(walker, call, next, move.later) if walker.wants_rescue(call, move) else None
            walker.aim(call, move, key, later.hooks() if later is not None else None)
            outcome: Outcome = await next(call)
            if outcome.error is None:
                if later is not None:
                    later.result = outcome.result
                return delivery.live(call, outcome, primary=move.step is PRIMARY, key=key, reason=reason)
            failure = _telling(failure, outcome)
            reply = outcome.judged.verdict
            reason = reason or reply
        error = walker.give_up(call, failure, declined)
        try:
            raise error
        finally:
            del error, failure  # the traceback holds this frame: break the cycle for the GC

    async def _local(
        self, call: Call, move: Serve, key: str | None, shape: Shape, declined: list[str]
    ) -> LocalAnswer | None:
        walker = self._walker
        if walker.refused(move.step, shape, declined):
            return None
        if move.step.kind == "cache":
            return await walker.delivery.cached_async(key, call)
        if move.step.kind != "function":
            return walker.delivery.local(call, move.step, key, move.reason, shape)
        if not walker.delivery.answers_text(call):
            return None
        try:
            produced = walker.function(move.step)(dict(call.body or {}), str(move.reason))
            if inspect.isawaitable(produced):
                produced = await produced
        except Exception:
            _log.exception("fallback function %r failed; trying the next rung", move.step.function)
            return None
        return walker.from_function(call, produced, shape, declined)


#: What :func:`_rescue` asks its driver: ``("send", sub_call)`` is answered with the Outcome,
#: ``("join", stream)`` with the regenerated stream joined where the caller is (or None).
RescueMove = tuple[str, Any]


def _rescue(
    walker: Walker, call: Call, later: list[FallbackStep], partial: str, result: Any
) -> Generator[RescueMove, Any, Any]:
    """The rescue of a chat stream that broke after its first token, decided once for both
    drivers: on each later live step (each tried once per stream), continue from a prefill where
    the step accepts one, else ask again and splice the new answer in where the caller is.
    Returns the bytes that finish the answer, or None when no step could."""
    interrupted(call)
    while later:
        step = later.pop(0)
        sub = walker.continuation_call(call, step, partial)
        if sub is not None:
            outcome: Outcome = yield ("send", sub)
            stream = _sdk.response_of(outcome.result) if outcome.ok else None
            if stream is not None:
                walker.rescued(call, sub, result, "continued")
                return stream.stream
            if not _refused_prefill(outcome):
                continue  # the step is failing, not refusing the prefill: don't ask it again
        sub = walker.regeneration_call(call, step)
        outcome = yield ("send", sub)
        stream = _sdk.response_of(outcome.result) if outcome.ok else None
        joined = (yield ("join", stream.stream)) if stream is not None else None
        if joined is not None:
            walker.rescued(call, sub, result, "spliced")
            return joined
    return None


class _SyncRescue:
    """Drives :func:`_rescue` for a stream read in a thread."""

    __slots__ = ("_call", "_later", "_next", "_walker", "result")

    def __init__(self, walker: Walker, call: Call, next: Handler, later: tuple[FallbackStep, ...]) -> None:
        self._walker = walker
        self._call = call
        self._next = next
        self._later = [step for step in later if is_live(step)]
        #: The caller's stream, once the target answered: a rescue re-labels it.
        self.result: Any = None

    def hooks(self) -> StreamHooks:
        return StreamHooks(rescue_sync=self)

    def __call__(self, partial: str) -> Iterable[bytes] | None:
        moves = _rescue(self._walker, self._call, self._later, partial, self.result)
        reply: Any = None
        while True:
            try:
                kind, arg = moves.send(reply)
            except StopIteration as done:
                return cast("Iterable[bytes] | None", done.value)
            reply = self._next(arg) if kind == "send" else _join(arg, partial)


def _join(chunks: Iterable[bytes], partial: str) -> Iterable[bytes] | None:
    """The regenerated stream from where the caller is, once it has joined ``partial`` (None: it
    does not start with it, or broke first; the regenerated stream is then closed)."""
    splice = Splice(partial)
    source = iter(chunks)
    held: list[bytes] = []
    try:
        for chunk in source:
            kept = splice_chunk(splice, chunk)
            if kept:
                held.append(kept)
            if splice.joined:
                return Joined(held, source, chunks)
    except (SpliceFailed, IncompleteStreamError, httpx2.TransportError, httpx2.TimeoutException):
        pass
    finally:
        if not splice.joined:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    return None


class _AsyncRescue:
    """Drives :func:`_rescue` for a stream read in an asyncio task."""

    __slots__ = ("_call", "_later", "_next", "_walker", "result")

    def __init__(
        self, walker: Walker, call: Call, next: AsyncHandler, later: tuple[FallbackStep, ...]
    ) -> None:
        self._walker = walker
        self._call = call
        self._next = next
        self._later = [step for step in later if is_live(step)]
        self.result: Any = None

    def hooks(self) -> StreamHooks:
        return StreamHooks(rescue_async=self)

    async def __call__(self, partial: str) -> AsyncIterable[bytes] | None:
        moves = _rescue(self._walker, self._call, self._later, partial, self.result)
        reply: Any = None
        while True:
            try:
                kind, arg = moves.send(reply)
            except StopIteration as done:
                return cast("AsyncIterable[bytes] | None", done.value)
            reply = await self._next(arg) if kind == "send" else await _ajoin(arg, partial)


async def _ajoin(chunks: AsyncIterable[bytes], partial: str) -> AsyncIterable[bytes] | None:
    """The asyncio twin of :func:`_join`."""
    splice = Splice(partial)
    source = aiter(chunks)
    held: list[bytes] = []
    try:
        async for chunk in source:
            kept = splice_chunk(splice, chunk)
            if kept:
                held.append(kept)
            if splice.joined:
                return AsyncJoined(held, source, chunks)
    except (SpliceFailed, IncompleteStreamError, httpx2.TransportError, httpx2.TimeoutException):
        pass
    finally:
        if not splice.joined:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
    return None
