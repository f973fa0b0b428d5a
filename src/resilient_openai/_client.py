"""The drop-in facade: ``resilient(client, policy)`` returns the same client class, chain inside.

The returned object is an instance of a subclass of the caller's client class made for this
policy, so it type-checks and ``isinstance``-checks as ``OpenAI`` / ``AsyncOpenAI``, and every
resource method, ``with_options``, ``with_raw_response`` and ``with_streaming_response`` reaches
the SDK's single ``request`` method — which is where the chain sits. Copies made with
``with_options`` share the chain (breakers, cache) and keep the SDK's own retries off.
``close()`` (and leaving ``with`` / ``async with``) also closes the chain's Redis links, like the
SDK's close of the connection pool that copies share too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast, overload

import openai

from . import _sdk
from ._chain import Chain
from ._clock import SYSTEM_CLOCK, Clock
from ._config import path_of, show
from ._errors import ConfigError
from ._fallback.shared_cache import settings_from
from ._policy import Policy
from ._runtime import FallbackFunction, HttpClientFactory, Runtime

if TYPE_CHECKING:
    from .observe.events import Listener

__all__ = ["resilient"]

ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)
PolicyLike = Policy | Mapping[str, Any] | str | os.PathLike[str] | None


class _SyncShell:
    """Methods put in front of ``openai.OpenAI`` (or a subclass): every request runs the chain.

    Not a base class: CPython only lets an existing client take a new class whose layout is the
    same, so these functions are copied into a direct subclass of the caller's client class.
    """

    _resilience: ClassVar[Chain]
    _resilience_base: ClassVar[type[Any]]

    def request(self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
        return self._resilience.call(self, cast_to, options, stream, stream_cls)

    def copy(self, **kwargs: Any) -> Any:
        kwargs["max_retries"] = 0
        return self._resilience_base.copy(self, **kwargs)

    def close(self) -> None:
        """Send the shared breakers' last reports and stop the chain's Redis threads, then close
        the SDK's connection pool."""
        try:
            self._resilience.close()
        finally:
            self._resilience_base.close(self)


class _AsyncShell:
    """Methods put in front of ``openai.AsyncOpenAI`` (or a subclass): every request runs the chain."""

    _resilience: ClassVar[Chain]
    _resilience_base: ClassVar[type[Any]]

    async def request(
        self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        return await self._resilience.call(self, cast_to, options, stream, stream_cls)

    def copy(self, **kwargs: Any) -> Any:
        kwargs["max_retries"] = 0
        return self._resilience_base.copy(self, **kwargs)

    async def close(self) -> None:
        """:meth:`_SyncShell.close` for asyncio: the Redis part runs on a worker thread, so the
        loop is not blocked while the last reports are sent."""
        try:
            await asyncio.to_thread(self._resilience.close)
        finally:
            await self._resilience_base.close(self)


def _shell_class(base: type[Any], shell: type[Any], chain: Chain) -> type[Any]:
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__slots__": (),
        "__doc__": f"{base.__name__} with the resilience chain in front of every request.",
        "_resilience": chain,
        "_resilience_base": base,
        "request": shell.request,
        "copy": shell.copy,
        "with_options": shell.copy,
        "close": shell.close,
        **_sdk.client_methods(base, is_async=shell is _AsyncShell, keep_bodies=chain.cache is not None),
    }
    return type(f"Resilient{base.__name__}", (base,), namespace)


def _coerce(policy: object) -> Policy:
    """The policy to build the chain from: given, loaded from data or a file, or the default."""
    if isinstance(policy, Policy):
        return policy
    if policy is None:
        return Policy()
    if isinstance(policy, Mapping):
        return Policy.from_dict(policy)
    if isinstance(policy, str | os.PathLike):
        return Policy.from_file(policy)
    raise ConfigError(
        [f"policy: must be a Policy, a dict of settings or a path to a file, got {show(policy)}"]
    )


def _runtime(
    policy: Policy,
    is_async: bool,
    *,
    clock: object,
    listeners: object,
    clients: object,
    functions: object,
    breaker_key: object,
    http_client: object,
) -> Runtime:
    """The collaborators, each checked against the policy once; ConfigError lists every mistake."""
    problems: list[str] = []

    def refuse(key: str, allowed: str, value: object) -> None:
        problems.append(f"{key}: must be {allowed}, got {show(value)}")

    if clock is not None and not isinstance(clock, Clock):
        refuse("clock", "a Clock (now, wall, sleep, asleep)", clock)
    if isinstance(listeners, str | bytes | Mapping) or not isinstance(listeners, Iterable):
        refuse("listeners", "an iterable of callables", listeners)
        listeners = ()
    listeners = tuple(listeners)
    for index, listener in enumerate(listeners):
        if not callable(listener):
            refuse(f"listeners[{index}]", "callable", listener)
    for key, value in (("clients", clients), ("functions", functions)):
        if value is not None and not isinstance(value, Mapping):
            refuse(key, "a dict by name", value)
    clients = dict(clients) if isinstance(clients, Mapping) else {}
    functions = dict(functions) if isinstance(functions, Mapping) else {}
    targets = policy.fallback.targets
    want = openai.AsyncOpenAI if is_async else openai.OpenAI
    for name, client in clients.items():
        target, where = targets.get(name), f"clients[{name!r}]"
        if target is None:
            defined = ", ".join(sorted(targets)) or "none"
            problems.append(f"{where}: names no target in fallback.targets; defined targets: {defined}")
        elif not isinstance(client, want):
            kind = f"openai.{want.__name__} like the wrapped client"
            problems.append(f"{where}: must be an {kind}, got a {type(client).__name__}")
        elif dead := " and ".join(
            key for key in ("base_url", "api_key_env") if getattr(target, key) is not None
        ):
            problems.append(
                f"{where}: ambiguous: fallback.targets.{name} also sets {dead}, which only build a client "
                f"when none is given; give either the client or {dead}"
            )
    problems += [
        f"{path_of(('fallback', 'targets', name))}: needs a base_url, or a ready client passed as "
        f"resilient(..., clients={{{name!r}: client}})"
        for name, target in targets.items()
        if target.base_url is None and name not in clients
    ]
    for name, function in functions.items():
        if not callable(function):
            refuse(f"functions[{name!r}]", "callable as function(request_body, reason)", function)
    given = ", ".join(sorted(functions)) or "none"
    problems += [
        f"{path_of(('fallback', 'routes', key, *at, 'function'))}: no function {show(step.function)} "
        f"was passed as resilient(..., functions={{...}}); given: {given}"
        for key, route in policy.fallback.routes.items()
        for at, step in route.located_steps()
        if step.kind == "function" and step.function not in functions
    ]
    if breaker_key is not None and not callable(breaker_key):
        refuse("breaker_key", "None or callable as breaker_key(base_url, model)", breaker_key)
    if http_client is not None and not callable(http_client):
        refuse("http_client", "None or callable as http_client(target)", http_client)
    shared_cache, unshared = settings_from(policy, os.environ)
    problems += unshared
    if problems:
        raise ConfigError(problems)
    return Runtime(
        clock=cast("Clock", clock) if clock is not None else SYSTEM_CLOCK,
        listeners=cast("tuple[Listener, ...]", listeners),
        clients=clients,
        functions=functions,
        breaker_key=cast("Callable[[str, str | None], str] | None", breaker_key),
        http_client=cast("HttpClientFactory | None", http_client),
        shared_cache=shared_cache,
    )


@overload
def resilient(
    client: openai.OpenAI,
    policy: PolicyLike = None,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    clients: Mapping[str, openai.OpenAI] | None = None,
    functions: Mapping[str, FallbackFunction] | None = None,
    breaker_key: Callable[[str, str | None], str] | None = None,
    http_client: HttpClientFactory | None = None,
) -> openai.OpenAI: ...
@overload
def resilient(
    client: openai.AsyncOpenAI,
    policy: PolicyLike = None,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    clients: Mapping[str, openai.AsyncOpenAI] | None = None,
    functions: Mapping[str, FallbackFunction] | None = None,
    breaker_key: Callable[[str, str | None], str] | None = None,
    http_client: HttpClientFactory | None = None,
) -> openai.AsyncOpenAI: ...
def resilient(
    client: ClientT,
    policy: PolicyLike = None,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    clients: Mapping[str, Any] | None = None,
    functions: Mapping[str, FallbackFunction] | None = None,
    breaker_key: Callable[[str, str | None], str] | None = None,
    http_client: HttpClientFactory | None = None,
) -> ClientT:
    """Put the resilience chain in front of ``client``; returns a client of the same class.

    ``policy`` is a :class:`Policy`, a plain dict (as in a config file), a path to a TOML/YAML
    file, or None for production defaults. The rest is code, which a policy cannot hold:

    * ``clock``: the time source for backoff, deadlines, breakers and the cache (default: the
      system's; tests pass ``resilient_openai.testing.FakeClock``).
    * ``listeners``: callables that receive every event (see :mod:`resilient_openai.observe`).
    * ``clients``: ready clients for fallback targets, by target name, of the same flavour
      (sync or async) as ``client``; a target without one is built from its ``base_url``.
    * ``functions``: the code behind ``function`` steps, by the name the step gives.
    * ``breaker_key``: names the breaker for ``(base_url, model)`` (default: one per pair).
    * ``http_client``: ``http_client(target)`` builds the HTTP client of each target made from
      ``base_url`` (default: the SDK's own).

    The given client is not changed; the returned one shares its connection pool and has the
    SDK's own retries switched off (``max_retries=0``), so exactly one retry layer exists. An
    invalid policy or collaborator raises :class:`~resilient_openai.ConfigError` here, listing
    every mistake, before any call is made.
    """
    resolved = _coerce(policy)
    base: type[Any] | None = getattr(type(client), "_resilience_base", None)
    if base is not None:
        pass
    elif isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
        base = type(client)
    else:
        raise TypeError(
            f"resilient() takes an openai.OpenAI or openai.AsyncOpenAI, got {type(client).__name__}"
        )
    is_async = isinstance(client, openai.AsyncOpenAI)
    runtime = _runtime(
        resolved, is_async, clock=clock, listeners=listeners, clients=clients, functions=functions,
        breaker_key=breaker_key, http_client=http_client,
    )  # fmt: skip
    chain = Chain.build(resolved, runtime, is_async=is_async)
    cls = _shell_class(base, _AsyncShell if is_async else _SyncShell, chain)
    wrapped = client.copy(max_retries=0)
    wrapped.__class__ = cls
    return wrapped
