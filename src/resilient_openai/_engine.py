"""The shared, I/O-free machinery behind a resilient client: policy, breakers, cache, the chain.

One :class:`Engine` is made per :func:`~resilient_openai.resilient` call and shared by every copy
of that client (``with_options`` included). The sync and async client shells only build a
:class:`~resilient_openai._chain._call.Call` and run the chain this engine built once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pydantic

from ._breaker import BreakerRegistry, default_key
from ._chain import build_async_chain, build_chain
from ._chain._call import AsyncHandler, Call, Handler, LiveTarget
from ._chain.attempt import AsyncAttempt, SyncAttempt, caller_limit, http_response_of
from ._chain.breaker import AsyncBreakerGate, SyncBreakerGate
from ._chain.chaos import AsyncChaos, SyncChaos
from ._chain.fallback import AsyncFallback, SyncFallback
from ._chain.retry import AsyncRetry, SyncRetry
from ._chain.terminal import async_terminal, sync_terminal
from ._chain.validate import AsyncValidate, SyncValidate
from ._classify import Verdict, classify
from ._clock import Clock
from ._fallback.cache import CachedAnswer, ResponseCache
from ._fallback.keys import PROCESS_SECRET, request_key, scope_id
from ._fallback.serve import CANNED_MODEL, FUNCTION_MODEL, answer_body, synthetic_response, text_answer
from ._policy import FallbackStep, Policy, Route
from ._provenance import Provenance, Source, attach
from ._runtime import Runtime
from .observe.events import CallCompleted, EventBus, FallbackServed

__all__ = ["Engine", "operation_of"]

#: Operations whose answers the cache can replay faithfully (as JSON and as a stream).
CACHEABLE = frozenset({"chat.completions", "responses"})

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


class Engine:
    """Policy, breakers, cache and the chain for one resilient client (and all its copies)."""

    def __init__(self, policy: Policy, runtime: Runtime, *, is_async: bool) -> None:
        self.policy = policy
        self.runtime = runtime
        self.clock: Clock = runtime.clock
        self.bus = EventBus(runtime.listeners)
        self.is_async = is_async
        self.breakers = BreakerRegistry(policy.breaker, clock=self.clock, bus=self.bus)
        self._breaker_key = runtime.breaker_key or default_key
        uses_cache = policy.cache.read_through or any(
            step.kind == "cache"
            for route in policy.fallback.routes.values()
            for step in (*route.steps, *([route.content_policy] if route.content_policy else []))
        )
        self.cache = (
            ResponseCache(policy.cache, clock=self.clock) if policy.cache.enabled and uses_cache else None
        )
        self._target_clients: dict[str, Any] = {}
        forced = policy.fallback.forced_failures
        if is_async:
            async_layers: list[Any] = [AsyncFallback(self), AsyncRetry(self.clock, self.bus)]
            async_layers += [AsyncBreakerGate(self.clock), AsyncAttempt(self.clock, self.bus)]
            if forced:
                async_layers.append(AsyncChaos(forced))
            if policy.validation.enabled:
                async_layers.insert(0, AsyncValidate(policy.validation))
            self.async_chain: AsyncHandler = build_async_chain(async_layers, async_terminal)
        else:
            layers: list[Any] = [SyncFallback(self), SyncRetry(self.clock, self.bus)]
            layers += [SyncBreakerGate(self.clock), SyncAttempt(self.clock, self.bus)]
            if forced:
                layers.append(SyncChaos(forced))
            if policy.validation.enabled:
                layers.insert(0, SyncValidate(policy.validation))
            self.sync_chain: Handler = build_chain(layers, sync_terminal)

    # -- building a call ---------------------------------------------------------------------

    def new_call(self, client: Any, cast_to: Any, options: Any, stream: bool, stream_cls: Any) -> Call:
        """A fresh :class:`Call` for one SDK request made through ``client``."""
        body = options.json_data
        if not isinstance(body, Mapping):
            body = None
        model = body.get("model") if body is not None else None
        now = self.clock.now()
        own = caller_limit(options.timeout, client.timeout)
        return Call(
            operation=operation_of(options.url),
            requested_model=model if isinstance(model, str) else None,
            body=body,
            cast_to=cast_to,
            options=options,
            stream=stream,
            stream_cls=stream_cls,
            client=client,
            started=now,
            deadline=now + self.policy.timeouts.total,
            caller_timeout=own,
        )

    # -- targets -----------------------------------------------------------------------------

    def _target_client(self, name: str) -> Any:
        client = self._target_clients.get(name)
        if client is None:
            import openai

            target = self.policy.fallback.targets[name]
            given = self.runtime.clients.get(name)
            if given is not None:
                client = given.with_options(max_retries=0)
            else:
                factory = self.runtime.http_client
                cls = openai.AsyncOpenAI if self.is_async else openai.OpenAI
                # Never fall back on OPENAI_API_KEY: that would send the primary's key elsewhere.
                client = cls(
                    api_key=target.api_key() or "unused",
                    base_url=target.base_url,
                    organization=target.organization,
                    project=target.project,
                    max_retries=0,
                    http_client=factory(target) if factory is not None else None,
                )
            client = self._target_clients.setdefault(name, client)
        return client

    def live_target(self, call: Call, step: FallbackStep, *, primary: bool) -> LiveTarget:
        """The target a live rung sends to, with its breaker, retry rules and time limits."""
        policy = self.policy
        if step.kind == "target":
            assert step.target is not None
            target = policy.fallback.targets[step.target]
            client = self._target_client(step.target)
            model = target.model or call.requested_model
            name = self._breaker_key(str(client.base_url), model)
            return LiveTarget(
                name=name,
                label=target.name,
                source=Source.FALLBACK_CLIENT,
                send=client.request,
                client=client,
                retry=target.retry or policy.retry,
                timeouts=policy.timeouts,
                breaker=self._breaker(name, target.breaker),
                model=model,
                accepts_prefill=target.accepts_prefill,
            )
        client = call.client
        model = call.requested_model if primary else step.model
        name = self._name_on(client, model)
        return LiveTarget(
            name=name,
            label="primary",
            source=Source.UPSTREAM if primary else Source.FALLBACK_MODEL,
            send=client._resilient_send,
            client=client,
            retry=policy.retry,
            timeouts=policy.timeouts,
            breaker=self._breaker(name, None),
            model=None if primary else model,
        )

    def _name_on(self, client: Any, model: str | None) -> str:
        """The breaker name for ``model`` on ``client``, remembered per client instance.

        Rebuilding it from ``str(base_url)`` on every call is measurable on the success path;
        the memo is dropped if the client's base URL is ever reassigned.
        """
        base = client._base_url
        memo = client.__dict__.get("_resilience_names")
        if memo is None or memo[0] is not base:
            memo = (base, {})
            client.__dict__["_resilience_names"] = memo
        names: dict[str | None, str] = memo[1]
        name = names.get(model)
        if name is None:
            name = names[model] = self._breaker_key(str(base), model)
        return name

    def _breaker(self, name: str, override: Any) -> Any:
        if not self.policy.breaker.enabled and override is None:
            return None
        return self.breakers.get(name, override)

    # -- cache ---------------------------------------------------------------------------------

    def cache_key(self, call: Call, route: Route) -> str | None:
        """The cache key of this call when the cache may answer or store it, else None."""
        cache = self.cache
        if cache is None or call.body is None or call.operation not in CACHEABLE:
            return None
        if not self.policy.cache.read_through and not _route_uses_cache(route):
            return None
        client = call.client
        if getattr(client, "_api_key_provider", None) is not None or not client.api_key:
            # The key is resolved per request by a provider: no stable tenant to scope by.
            return None
        scope = scope_id(
            api_key=client.api_key,
            organization=client.organization,
            project=client.project,
            base_url=str(client.base_url),
            secret=PROCESS_SECRET,
        )
        return request_key(call.operation, call.body, scope)

    def cached(self, key: str) -> tuple[dict[str, Any], str | None] | None:
        """The cached answer for ``key`` as a dict, and the model that gave it."""
        assert self.cache is not None
        hit = self.cache.get(key)
        if hit is None:
            return None
        return json.loads(hit.body), hit.model

    def _store(self, call: Call, key: str, body: bytes, model: str | None) -> None:
        assert self.cache is not None
        self.cache.put(key, CachedAnswer(call.operation, model, body, self.clock.wall()))

    # -- answers -------------------------------------------------------------------------------

    def delivered(
        self, call: Call, result: Any, primary: bool, cache_key: str | None, reason: Verdict | None
    ) -> Any:
        """A live target answered: record provenance, maybe store it, tell the listeners."""
        target = call.target
        assert target is not None
        answered_by = getattr(result, "model", None)
        if not isinstance(answered_by, str):
            answered_by = call.model
        if primary and cache_key is not None:
            self._remember(call, result, cache_key)
        source = target.source
        self._finish(call, result, source, answered_by, reason)
        return result

    def continuation_call(self, call: Call, step: FallbackStep, partial: str) -> Call | None:
        """A call asking ``step``'s target to continue ``partial``, if it declared it accepts a prefill.

        A prefill is never sent to a target that did not declare ``accepts_prefill``.
        """
        if step.kind != "target" or call.operation != "chat.completions" or call.body is None:
            return None
        target = self.live_target(call, step, primary=False)
        if not target.accepts_prefill:
            return None
        messages = [*call.body.get("messages", ()), {"role": "assistant", "content": partial}]
        body = {**call.body, "messages": messages}
        options = call.options.model_copy()
        options.json_data = body
        return dataclasses.replace(
            call, body=body, options=options, target=target, has_fallback=False, attempt=0,
            send_options=None, stream_watch=None, last_failure=None,
        )  # fmt: skip

    def continued(self, call: Call, sub: Call, result: Any, more: Any) -> Any:
        """The continuation answered: re-label the caller's stream, return its body to splice in."""
        response = http_response_of(more)
        target = sub.target
        if response is None or target is None:
            return None
        reason = Verdict.STREAM_INTERRUPTED.value
        attach(
            result,
            Provenance(
                source=Source.FALLBACK_CLIENT, model=sub.model, requested_model=call.requested_model,
                target=target.name, reason=reason, attempts=tuple(call.attempts),
            ),
        )  # fmt: skip
        if self.bus:
            source = Source.FALLBACK_CLIENT.value
            self.bus.emit(
                FallbackServed(
                    self.clock.wall(), call.operation, call.requested_model, sub.model, source, reason
                )
            )
        return response.stream

    def _remember(self, call: Call, result: Any, key: str) -> None:
        watch = call.stream_watch
        if watch is not None:
            model = call.model

            def store(answer: dict[str, Any]) -> None:
                self._store(call, key, json.dumps(answer, separators=(",", ":")).encode(), model)

            watch.on_complete.append(store)
            return
        if isinstance(result, pydantic.BaseModel) and getattr(result, "status", "completed") == "completed":
            body = result.model_dump_json(exclude_unset=True).encode()
            self._store(call, key, body, getattr(result, "model", None))

    def local_answer(
        self, call: Call, step: FallbackStep, cache_key: str | None, reason: Verdict | None
    ) -> tuple[dict[str, Any] | None, Source, str | None] | None:
        """What a local rung answers (None when it cannot: a cache miss, a non-text operation)."""
        if step.kind == "cache":
            if cache_key is None:
                return None
            hit = self.cached(cache_key)
            return None if hit is None else (hit[0], Source.CACHE, hit[1])
        if step.kind == "canned":
            text = (step.text or "").format(model=call.requested_model or "", reason=str(reason or ""))
            answer = text_answer(call.operation, text, CANNED_MODEL)
            return None if answer is None else (answer, Source.CANNED, CANNED_MODEL)
        if step.kind == "function" and text_answer(call.operation, "", FUNCTION_MODEL) is not None:
            return None, Source.FUNCTION, FUNCTION_MODEL
        return None

    def function_answer(self, call: Call, text: str) -> dict[str, Any] | None:
        """The answer object for the text a user function returned."""
        return text_answer(call.operation, text, FUNCTION_MODEL)

    def _synthetic(self, call: Call, answer: dict[str, Any]) -> Any:
        client = call.client
        content = answer_body(call.operation, answer, stream=call.stream, body=call.body)
        return synthetic_response(client._build_request(call.options), content, stream=call.stream)

    def serve_sync(
        self, call: Call, answer: dict[str, Any], source: Source, model: str | None, *, reason: Verdict | None
    ) -> Any:
        """Deliver a local answer as the SDK's own result type (threads)."""
        response = self._synthetic(call, answer)
        result = call.client._process_response(
            cast_to=call.cast_to, options=call.options, response=response, stream=call.stream,
            stream_cls=call.stream_cls,
        )  # fmt: skip
        self._finish(call, result, source, model, reason)
        return result

    async def serve_async(
        self, call: Call, answer: dict[str, Any], source: Source, model: str | None, *, reason: Verdict | None
    ) -> Any:
        """Deliver a local answer as the SDK's own result type (asyncio tasks)."""
        response = self._synthetic(call, answer)
        result = await call.client._process_response(
            cast_to=call.cast_to, options=call.options, response=response, stream=call.stream,
            stream_cls=call.stream_cls,
        )  # fmt: skip
        self._finish(call, result, source, model, reason)
        return result

    def _finish(
        self, call: Call, result: Any, source: Source, model: str | None, reason: Verdict | None
    ) -> None:
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
        bus = self.bus
        if bus:
            now = self.clock
            if source is not Source.UPSTREAM:
                bus.emit(FallbackServed(now.wall(), call.operation, call.requested_model, model, source.value,
                                        record.reason or ""))  # fmt: skip
            bus.emit(
                CallCompleted(
                    now.wall(), call.operation, call.requested_model, source.value, "success",
                    len(call.attempts), now.now() - call.started, None, answered_by=model,
                )
            )  # fmt: skip

    def give_up(self, call: Call, error: BaseException) -> BaseException:
        """Nothing answered: the last failure is the answer, with its provenance attached."""
        verdict = call.last_failure.verdict if call.last_failure is not None else classify(error).verdict
        attach(
            error,
            Provenance(
                source=None,
                model=None,
                requested_model=call.requested_model,
                target=call.target.name if call.target is not None else None,
                reason=verdict.value,
                attempts=tuple(call.attempts),
            ),
        )
        if self.bus:
            now = self.clock
            self.bus.emit(
                CallCompleted(
                    now.wall(), call.operation, call.requested_model, None, verdict.value,
                    len(call.attempts), now.now() - call.started, type(error).__name__,
                )
            )  # fmt: skip
        return error


_LIVE_SOURCES = frozenset({Source.UPSTREAM, Source.FALLBACK_MODEL, Source.FALLBACK_CLIENT})


def _route_uses_cache(route: Route) -> bool:
    return any(step.kind == "cache" for step in route.steps) or (
        route.content_policy is not None and route.content_policy.kind == "cache"
    )
