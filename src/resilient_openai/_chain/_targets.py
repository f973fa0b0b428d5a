"""Where a live step sends: the caller's client, another model on it, or another provider.

The fallback layer owns one :class:`Targets`; it turns a route's step into a
:class:`~resilient_openai._chain._call.LiveTarget` with its breaker, retry rules and time limits,
building each fallback provider's client once.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any

import openai

from .. import _sdk
from .._breaker import BreakerRegistry, default_key
from .._budget import BudgetRegistry
from .._provenance import Source
from ._call import Call, LiveTarget

if TYPE_CHECKING:
    from .._policy import BreakerPolicy, FallbackStep, Policy
    from .._runtime import Runtime

__all__ = ["Targets"]


class Targets:
    """The live targets of one resilient client (and all its copies)."""

    __slots__ = (
        "_breaker_key", "_breakers", "_budgets", "_clients", "_is_async", "_lock", "_policy", "_runtime",
    )  # fmt: skip

    def __init__(
        self,
        policy: Policy,
        runtime: Runtime,
        breakers: BreakerRegistry,
        budgets: BudgetRegistry,
        *,
        is_async: bool,
    ) -> None:
        self._policy = policy
        self._runtime = runtime
        self._breakers = breakers
        self._budgets = budgets
        self._breaker_key = runtime.breaker_key or default_key
        self._is_async = is_async
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def live(self, step: FallbackStep, call: Call) -> LiveTarget:
        """The target ``step`` sends to, for ``call`` (made through its client, for its model).

        A target's first use in this process reads its shared breaker state, within what
        ``call`` has left of its time on Redis.
        """
        policy = self._policy
        if step.kind == "target":
            assert step.target is not None
            target = policy.fallback.targets[step.target]
            client = self._client(step.target)
            model = target.model or call.requested_model
            name = self._breaker_key(str(client.base_url), model)
            retry = target.retry or policy.retry
            return LiveTarget(
                name=name,
                label=target.name,
                source=Source.FALLBACK_CLIENT,
                send=client.request,
                client=client,
                retry=retry,
                timeouts=policy.timeouts,
                breaker=self._breaker(name, target.breaker, call),
                budget=self._budgets.get(name, retry.budget),
                model=model,
                accepts_prefill=target.accepts_prefill,
            )
        return self._on_caller(call, step.model)

    def _on_caller(self, call: Call, step_model: str | None) -> LiveTarget:
        """The caller's own client asked for its model (``step_model`` None) or another one.

        Remembered per client instance, model and kind: rebuilding the breaker name from
        ``str(base_url)`` on every call is measurable on the success path. The memo is dropped
        when the client's base URL is reassigned or a registry dropped a breaker or a retry
        budget (a target keeps using the ones the registries hold), and bounded.
        """
        caller, requested_model = call.client, call.requested_model
        base = _sdk.base_url(caller)
        memo = caller.__dict__.get("_resilience_targets")
        breakers, budgets = self._breakers.epoch, self._budgets.epoch
        if memo is None or memo[0] is not base or memo[1] != breakers or memo[2] != budgets:
            memo = (base, breakers, budgets, {})
            caller.__dict__["_resilience_targets"] = memo
        known: dict[tuple[str | None, str | None], LiveTarget] = memo[3]
        key = (step_model, requested_model)
        live = known.get(key)
        if live is None:
            primary = step_model is None
            model = requested_model if primary else step_model
            name = self._breaker_key(str(base), model)
            live = LiveTarget(
                name=name,
                label="primary",
                source=Source.UPSTREAM if primary else Source.FALLBACK_MODEL,
                send=functools.partial(type(caller)._resilience_base.request, caller),
                client=caller,
                retry=self._policy.retry,
                timeouts=self._policy.timeouts,
                breaker=self._breaker(name, None, call),
                budget=self._budgets.get(name, self._policy.retry.budget),
                model=None if primary else model,
            )
            if len(known) < self._policy.breaker.max_breakers:  # no more than there are breakers
                known[key] = live
        return live

    def _client(self, name: str) -> Any:
        client = self._clients.get(name)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = self._build(name)
        return client

    def _build(self, name: str) -> Any:
        given = self._runtime.clients.get(name)
        if given is not None:
            return given.with_options(max_retries=0)
        target = self._policy.fallback.targets[name]
        factory = self._runtime.http_client
        cls = openai.AsyncOpenAI if self._is_async else openai.OpenAI
        # Never fall back on OPENAI_API_KEY: that would send the primary's key elsewhere.
        return cls(
            api_key=target.api_key() or "unused",
            base_url=target.base_url,
            organization=target.organization,
            project=target.project,
            max_retries=0,
            http_client=factory(target) if factory is not None else None,
        )

    def _breaker(self, name: str, override: BreakerPolicy | None, call: Call) -> Any:
        if not self._policy.breaker.enabled and override is None:
            return None
        shared = self._policy.shared
        if shared is None:
            return self._breakers.get(name, override)
        if self._is_async:  # its gate waits for the read off the event loop
            return self._breakers.get(name, override, within=call.redis_left(shared.timeout), later=True)
        started = time.monotonic()
        breaker = self._breakers.get(name, override, within=call.redis_left(shared.timeout))
        call.redis_waited += time.monotonic() - started
        return breaker
