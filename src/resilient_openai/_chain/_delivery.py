"""Turning what answered into the caller's result: provenance, events, and the answer cache.

The fallback layer owns one :class:`Delivery`. It stores good answers from the primary (for the
``cache`` step and read-through), makes local answers (cached, canned, a function's text) into
the SDK's own result types, and stamps every result and every final error with its provenance.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import pydantic

from .. import _sdk
from .._classify import Verdict
from .._errors import IncompleteStreamError
from .._fallback.cache import CachedAnswer, ResponseCache
from .._fallback.keys import PROCESS_SECRET, request_key
from .._fallback.serve import CANNED_MODEL, FUNCTION_MODEL, answer_body, text_answer
from .._fallback.shape import Shape, canned_reply
from .._fallback.shared_cache import SharedCache
from .._provenance import Provenance, Source, attach, provenance
from ..observe.events import CallCompleted, FallbackServed
from ._tenant import scope
from ._watch import StreamHooks

if TYPE_CHECKING:
    from .._clock import Clock
    from .._fallback.shared_cache import SharedCacheSettings
    from .._policy import FallbackStep, Policy, Route
    from ..observe.events import EventBus
    from ._call import Call, LiveTarget, Outcome

__all__ = ["CACHEABLE", "Delivery", "LocalAnswer"]

#: Operations whose answers the cache can replay faithfully (as JSON and as a stream).
CACHEABLE = frozenset({"chat.completions", "responses"})
#: The list every answer of a cacheable operation carries.
_ANSWER_FIELD: Mapping[str, str] = {"chat.completions": "choices", "responses": "output"}
_LIVE_SOURCES = frozenset({Source.UPSTREAM, Source.FALLBACK_MODEL, Source.FALLBACK_CLIENT})


_NO_RESCUE = StreamHooks()

#: What ``parse()`` adds to an answer (the caller's parsed objects): never part of the wire answer,
#: so never stored (their declared type is a type variable, which the serializer warns about).
_PARSED: Mapping[str, Any] = {
    "chat.completions": {
        "choices": {
            "__all__": {
                "message": {"parsed": True, "tool_calls": {"__all__": {"function": {"parsed_arguments"}}}}
            }
        }
    },
    "responses": {"output": {"__all__": {"parsed_arguments": True, "content": {"__all__": {"parsed"}}}}},
}


def interrupted(call: Call) -> str | None:
    """Mark the attempt whose stream broke mid-answer (the last one that delivered) as
    interrupted; its target's name, if there was one."""
    for index in range(len(call.attempts) - 1, -1, -1):
        record = call.attempts[index]
        if record.verdict == Verdict.STREAM_INTERRUPTED.value:
            return record.target  # marked already, when its rescue was tried
        if record.verdict == Verdict.SUCCESS.value:
            call.attempts[index] = dataclasses.replace(record, verdict=Verdict.STREAM_INTERRUPTED.value)
            return record.target
    return None


class LocalAnswer(NamedTuple):
    """An answer made without a model: its JSON object, who made it, and the model it names."""

    answer: Mapping[str, Any]
    source: Source
    model: str | None


def _headers(record: Provenance) -> dict[str, str]:
    """The ``x-resilient-*`` headers a raw response carries: where its answer came from."""
    headers = {"x-resilient-source": record.source.value if record.source is not None else ""}
    if record.model is not None:
        headers["x-resilient-model"] = record.model
    if record.reason is not None:
        headers["x-resilient-reason"] = record.reason
    return headers


def _uses_cache(route: Route) -> bool:
    return any(step.kind == "cache" for step in route.steps) or (
        route.content_policy is not None and route.content_policy.kind == "cache"
    )


class Delivery:
    """Results and errors leave the chain through here, with their provenance."""

    __slots__ = ("_bus", "_caching_routes", "_clock", "_read_through", "_secret", "cache", "shared")

    def __init__(
        self, policy: Policy, *, clock: Clock, bus: EventBus, shared: SharedCacheSettings | None
    ) -> None:
        self._clock = clock
        self._bus = bus
        self._read_through = policy.cache.read_through
        #: The routes with a cache step, by identity (the policy is frozen and outlives us).
        self._caching_routes = {id(route) for route in policy.fallback.routes.values() if _uses_cache(route)}
        uses_cache = self._read_through or bool(self._caching_routes)
        self.cache = ResponseCache(policy.cache, clock=clock) if policy.cache.enabled and uses_cache else None
        #: The Redis level behind the local cache (made only when there is a local cache).
        self.shared = SharedCache(shared) if shared is not None and self.cache is not None else None
        #: Keys the tenant hash: the secret every worker holds when the cache is shared.
        self._secret = self.shared.secret if self.shared is not None else PROCESS_SECRET

    # -- the cache ---------------------------------------------------------------------------

    def cache_key(self, call: Call, route: Route) -> str | None:
        """The cache key of this call when the cache may answer or store it, else None."""
        if self.cache is None or call.body is None or call.operation not in CACHEABLE:
            return None
        if not self._read_through and id(route) not in self._caching_routes:
            return None
        tenant = scope(call.client, call.options, self._secret)
        return None if tenant is None else request_key(call.operation, call.body, tenant)

    def read_through(self, key: str | None, call: Call) -> LocalAnswer | None:
        """A cached answer served before any upstream is asked, when read-through is on."""
        return self.cached(key, call) if self._read_through else None

    async def read_through_async(self, key: str | None, call: Call) -> LocalAnswer | None:
        """:meth:`read_through` for asyncio tasks (a Redis read never blocks the loop)."""
        return await self.cached_async(key, call) if self._read_through else None

    def cached(self, key: str | None, call: Call) -> LocalAnswer | None:
        """The last good answer stored under ``key``: the local cache's, else the shared one's
        (waiting on Redis at most what ``call`` has left of ``shared.timeout``)."""
        if key is None or self.cache is None:
            return None
        hit = self.cache.get(key)
        shared = self.shared
        if hit is None and shared is not None:
            started = time.monotonic()
            hit = self._adopt(key, shared.get(key, call.operation, call.redis_left(shared.timeout)))
            call.redis_waited += time.monotonic() - started
        return None if hit is None else LocalAnswer(json.loads(hit.body), Source.CACHE, hit.model)

    async def cached_async(self, key: str | None, call: Call) -> LocalAnswer | None:
        """:meth:`cached` for asyncio tasks (a Redis read never blocks the loop)."""
        if key is None or self.cache is None:
            return None
        hit = self.cache.get(key)
        shared = self.shared
        if hit is None and shared is not None:
            started = time.monotonic()
            hit = self._adopt(
                key, await shared.get_async(key, call.operation, call.redis_left(shared.timeout))
            )
            call.redis_waited += time.monotonic() - started
        return None if hit is None else LocalAnswer(json.loads(hit.body), Source.CACHE, hit.model)

    def _adopt(self, key: str, hit: CachedAnswer | None) -> CachedAnswer | None:
        """An answer another worker shared, kept locally too (for ``ttl`` from now)."""
        if hit is not None:
            assert self.cache is not None
            self.cache.put(key, hit)
        return hit

    def _store(self, call: Call, key: str, body: bytes, model: str | None) -> None:
        assert self.cache is not None
        answer = CachedAnswer(call.operation, model, body, self._clock.wall())
        self.cache.put(key, answer)
        if self.shared is not None:
            self.shared.put(key, answer)  # queued: the caller never waits on Redis

    def stream_hooks(self, call: Call, key: str | None, continuation: StreamHooks | None) -> StreamHooks:
        """What a live stream reports when it ends: a finished answer from the primary is stored
        (``key``), a cut one may be continued, a broken one records what happened."""
        store = None
        if key is not None:
            model = call.model

            def store(answer: dict[str, Any]) -> None:
                self._store(call, key, json.dumps(answer, separators=(",", ":")).encode(), model)

        def ended(result: Any, error: IncompleteStreamError | None) -> None:
            if error is not None:
                self._broken(call, result, error)
            self._completed(call, provenance(result), error)

        go_on = continuation or _NO_RESCUE
        return StreamHooks(store, go_on.rescue_sync, go_on.rescue_async, ended)

    def _broken(self, call: Call, result: Any, error: IncompleteStreamError) -> None:
        """A stream broke after its answer began (its rescue too, if one was tried): the attempt
        that was streaming was no success after all. The error and the caller's stream say so."""
        name = interrupted(call)
        reason = Verdict.STREAM_INTERRUPTED.value
        attempts = tuple(call.attempts)
        record = Provenance(
            source=None, model=None, requested_model=call.requested_model, target=name, reason=reason,
            attempts=attempts,
        )  # fmt: skip
        attach(error, record)
        delivered = provenance(result)
        if delivered is not None:
            attach(result, dataclasses.replace(delivered, reason=reason, attempts=attempts))

    # -- local answers -----------------------------------------------------------------------

    def local(
        self, call: Call, step: FallbackStep, key: str | None, reason: Verdict | None, shape: Shape
    ) -> LocalAnswer | None:
        """What a cache or canned step answers (None when it cannot: a miss, a non-text operation,
        a request shape the canned step has no answer for)."""
        if step.kind == "cache":
            return self.cached(key, call)
        if step.kind == "canned":
            reply = canned_reply(step, shape)
            if isinstance(reply, str):
                return None
            text = reply.text or ""
            if reply.template:
                text = text.format(model=call.requested_model or "", reason=str(reason or ""))
            answer = text_answer(call.operation, text, CANNED_MODEL, reply.tool_call)
            return None if answer is None else LocalAnswer(answer, Source.CANNED, CANNED_MODEL)
        return None

    @staticmethod
    def answers_text(call: Call) -> bool:
        """Whether a function's text can answer this call's operation at all."""
        return text_answer(call.operation, "", FUNCTION_MODEL) is not None

    @staticmethod
    def from_function(call: Call, text: str) -> LocalAnswer | None:
        """The answer object for the text a user function returned."""
        answer = text_answer(call.operation, text, FUNCTION_MODEL)
        return None if answer is None else LocalAnswer(answer, Source.FUNCTION, FUNCTION_MODEL)

    def serve_sync(self, call: Call, local: LocalAnswer, reason: Verdict | None) -> Any:
        """Deliver a local answer as the SDK's own result type (threads)."""
        result = _sdk.local_result_sync(
            call.client, call.cast_to, call.options, answer=local.answer, wire=self._wire(call, local),
            stream=call.stream, stream_cls=call.stream_cls,
        )  # fmt: skip
        self._finish(call, result, local.source, local.model, reason)
        return result

    async def serve_async(self, call: Call, local: LocalAnswer, reason: Verdict | None) -> Any:
        """Deliver a local answer as the SDK's own result type (asyncio tasks)."""
        result = await _sdk.local_result_async(
            call.client, call.cast_to, call.options, answer=local.answer, wire=self._wire(call, local),
            stream=call.stream, stream_cls=call.stream_cls,
        )  # fmt: skip
        self._finish(call, result, local.source, local.model, reason)
        return result

    @staticmethod
    def _wire(call: Call, local: LocalAnswer) -> Any:
        return lambda: answer_body(call.operation, local.answer, stream=call.stream, body=call.body)

    # -- live answers and failures -------------------------------------------------------------

    def live(
        self, call: Call, outcome: Outcome, *, primary: bool, key: str | None, reason: Verdict | None
    ) -> Any:
        """A live target answered: maybe store it, record provenance, tell the listeners."""
        result = outcome.result
        unstored = None
        if (
            primary
            and key is not None
            and outcome.watch is None
            and not self._remember(call, result, key, outcome.body)
        ):
            unstored = key  # a wrapper with its body unread: stored when the caller parses it
        answered_by = getattr(result, "model", None)
        if not isinstance(answered_by, str):
            answered_by = call.model
        target = call.target
        assert target is not None
        self._finish(
            call, result, target.source, answered_by, reason, completed=outcome.watch is None, key=unstored
        )
        return result

    def _remember(self, call: Call, result: Any, key: str, body: bytes | None = None) -> bool:
        """Store an answer from the primary: a parsed one (plain, ``parse()``) as ``body``, the
        bytes it was read from (else as the model serializes), or the body a raw-response wrapper
        read (``with_raw_response``, as LangChain calls). False: there is nothing to read yet
        (``with_streaming_response``)."""
        if isinstance(result, pydantic.BaseModel):
            # A Responses answer may be unfinished (queued, incomplete): only a completed one is kept.
            if call.operation == "responses" and getattr(result, "status", "completed") != "completed":
                return True
            if body is None:
                exclude = _PARSED.get(call.operation)
                body = result.model_dump_json(exclude_unset=True, exclude=exclude).encode()
            self._store(call, key, body, getattr(result, "model", None))
            return True
        answer = _sdk.raw_answer(result)
        if answer is None:
            return False
        if not isinstance(answer.get(_ANSWER_FIELD[call.operation]), list):
            return True  # not an answer of the operation: never served again
        if call.operation == "responses" and answer.get("status", "completed") != "completed":
            return True
        model = answer.get("model")
        body = json.dumps(answer, separators=(",", ":")).encode()
        self._store(call, key, body, model if isinstance(model, str) else None)
        return True

    def _parsed(self, call: Call, wrapper: Any, key: str | None) -> Callable[[Any], None]:
        """What happens to what a raw wrapper's ``parse()`` returns: it carries the wrapper's
        provenance (read then: a rescued stream's changes after delivery), and an answer parsed
        from an unread body is stored under ``key``."""
        cast_to = call.cast_to if key is not None and inspect.isclass(call.cast_to) else None

        def parsed(value: Any) -> None:
            record = provenance(wrapper)
            if record is not None:
                attach(value, record)
            if cast_to is not None and key is not None and isinstance(value, cast_to):
                self._remember(call, value, key)

        return parsed

    def rescued(
        self, call: Call, result: Any, target: LiveTarget, model: str | None, reason: Verdict, how: str
    ) -> None:
        """A stream cut mid-answer is being finished by another target: say so on the result
        (listeners hear of it when the stream ends)."""
        attach(
            result,
            Provenance(
                source=target.source, model=model, requested_model=call.requested_model,
                target=target.name, reason=reason.value, attempts=tuple(call.attempts), rescue=how,
            ),
        )  # fmt: skip

    def _finish(
        self,
        call: Call,
        result: Any,
        source: Source,
        model: str | None,
        reason: Verdict | None,
        *,
        completed: bool = True,
        key: str | None = None,
    ) -> None:
        """Stamp ``result`` with its provenance and tell the listeners; a live stream's call is
        only ``completed`` when the stream ends. ``key``: store the answer when it is parsed."""
        target = call.target
        record = Provenance(
            source=source,
            model=model,
            requested_model=call.requested_model,
            target=target.name if target is not None and source in _LIVE_SOURCES else None,
            reason=reason.value if reason is not None else None,
            attempts=tuple(call.attempts),
        )
        attach(result, record)
        if not isinstance(result, pydantic.BaseModel):  # a stream or a raw wrapper
            _sdk.label(result, _headers(record), self._parsed(call, result, key))
        if completed:
            self._completed(call, record, None)

    def _completed(self, call: Call, record: Provenance | None, error: BaseException | None) -> None:
        """The call is over: an answer from ``record.source`` (a fallback's is announced as
        served), or ``error``."""
        bus = self._bus
        if not bus:
            return
        now, wall = self._clock.now(), self._clock.wall()
        attempts = len(record.attempts) if record is not None else len(call.attempts)
        if error is not None:
            verdict = (record.reason if record is not None else None) or Verdict.UNEXPECTED.value
            bus.emit(
                CallCompleted(
                    wall, call.operation, call.requested_model, None, verdict, attempts,
                    now - call.started, type(error).__name__,
                )
            )  # fmt: skip
            return
        assert record is not None
        assert record.source is not None
        source = record.source.value
        if record.source is not Source.UPSTREAM:
            served = FallbackServed(
                wall, call.operation, call.requested_model, record.model, source, record.reason or ""
            )
            bus.emit(served)
        bus.emit(
            CallCompleted(
                wall, call.operation, call.requested_model, source, "success", attempts,
                now - call.started, None, answered_by=record.model,
            )
        )  # fmt: skip

    def give_up(self, call: Call, failure: Outcome, error: BaseException | None = None) -> BaseException:
        """Nothing answered: the failure (or ``error``, which says why) is the answer, with its
        provenance attached."""
        error = error or failure.error
        assert error is not None
        record = Provenance(
            source=None,
            model=None,
            requested_model=call.requested_model,
            target=call.target.name if call.target is not None else None,
            reason=failure.judged.verdict.value,
            attempts=tuple(call.attempts),
        )
        attach(error, record)
        self._completed(call, record, error)
        return error
