"""The drop-in facade: ``resilient(client, policy)`` returns the same client class, chain inside.

The returned object is an instance of a subclass of the caller's client class made for this
policy, so it type-checks and ``isinstance``-checks as ``OpenAI`` / ``AsyncOpenAI``, and every
resource method, ``with_options``, ``with_raw_response`` and ``with_streaming_response`` reaches
the SDK's single ``request`` method — which is where the chain sits. Copies made with
``with_options`` share the chain (breakers, cache) and keep the SDK's own retries off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, overload

import openai

from ._chain import Chain
from ._errors import ConfigError
from ._policy import Policy
from ._runtime import Runtime

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

    def _resilient_send(self, cast_to: Any, options: Any, *, stream: bool, stream_cls: Any) -> Any:
        return self._resilience_base.request(self, cast_to, options, stream=stream, stream_cls=stream_cls)

    def copy(self, **kwargs: Any) -> Any:
        kwargs["max_retries"] = 0
        return self._resilience_base.copy(self, **kwargs)


class _AsyncShell:
    """Methods put in front of ``openai.AsyncOpenAI`` (or a subclass): every request runs the chain."""

    _resilience: ClassVar[Chain]
    _resilience_base: ClassVar[type[Any]]

    async def request(
        self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        return await self._resilience.call(self, cast_to, options, stream, stream_cls)

    async def _resilient_send(self, cast_to: Any, options: Any, *, stream: bool, stream_cls: Any) -> Any:
        return await self._resilience_base.request(
            self, cast_to, options, stream=stream, stream_cls=stream_cls
        )

    def copy(self, **kwargs: Any) -> Any:
        kwargs["max_retries"] = 0
        return self._resilience_base.copy(self, **kwargs)


def _shell_class(base: type[Any], shell: type[Any], chain: Chain) -> type[Any]:
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__slots__": (),
        "__doc__": f"{base.__name__} with the resilience chain in front of every request.",
        "_resilience": chain,
        "_resilience_base": base,
        "request": shell.request,
        "_resilient_send": shell._resilient_send,
        "copy": shell.copy,
        "with_options": shell.copy,
    }
    return type(f"Resilient{base.__name__}", (base,), namespace)


def _coerce(policy: PolicyLike) -> Policy:
    """The policy to build the Engine from, checked exactly once, before any request.

    Data and files are checked by their loader; a policy object (or the default) here, with the
    same rules and messages.
    """
    from ._config import check_policy

    if isinstance(policy, Mapping):
        return Policy.from_dict(policy)
    if policy is not None and not isinstance(policy, Policy):
        return Policy.from_file(policy)
    resolved = Policy() if policy is None else policy
    check_policy(resolved)
    return resolved


def _check_clients(runtime: Runtime, *, is_async: bool) -> None:
    """Every given target client is of the primary client's flavour."""
    want = openai.AsyncOpenAI if is_async else openai.OpenAI
    problems = [
        f"fallback.targets.{name}.client: must be an openai.{want.__name__} like the primary client"
        for name, client in runtime.clients.items()
        if not isinstance(client, want)
    ]
    if problems:
        raise ConfigError(problems)


@overload
def resilient(client: openai.OpenAI, policy: PolicyLike = None) -> openai.OpenAI: ...
@overload
def resilient(client: openai.AsyncOpenAI, policy: PolicyLike = None) -> openai.AsyncOpenAI: ...
def resilient(client: ClientT, policy: PolicyLike = None) -> ClientT:
    """Put the resilience chain in front of ``client``; returns a client of the same class.

    ``policy`` is a :class:`Policy`, a plain dict (as in a config file), a path to a TOML/YAML
    file, or None for production defaults. The given client is not changed; the returned one
    shares its connection pool and has the SDK's own retries switched off (``max_retries=0``),
    so exactly one retry layer exists. Invalid policies raise
    :class:`~resilient_openai.ConfigError` here, before any call is made.
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
    runtime = Runtime(
        clock=resolved.clock,
        listeners=resolved.listeners,
        breaker_key=resolved.breaker_key,
        clients={name: t.client for name, t in resolved.fallback.targets.items() if t.client is not None},
    )
    _check_clients(runtime, is_async=is_async)
    chain = Chain.build(resolved, runtime, is_async=is_async)
    cls = _shell_class(base, _AsyncShell if is_async else _SyncShell, chain)
    wrapped = client.copy(max_retries=0)
    wrapped.__class__ = cls
    return wrapped
