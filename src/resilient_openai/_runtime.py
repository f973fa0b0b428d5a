"""The code a resilient client runs with, as opposed to the policy's data.

A :class:`~resilient_openai.Policy` is data a file can hold; a :class:`Runtime` holds what only
code can give: the clock, event listeners, ready clients for fallback targets, the functions that
``function`` steps name, and how to build HTTP clients for targets made from configuration. Each
is a keyword argument of :func:`~resilient_openai.resilient`. What ``[shared]`` reads from the
environment (the Redis URL, the cache's key secret) is resolved here too, once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from ._fallback.shared_cache import SharedCacheSettings
    from ._policy import Target
    from .observe.events import Listener

__all__ = ["FallbackFunction", "HttpClientFactory", "Runtime"]

#: A ``function`` step's code: ``function(request_body, reason)`` returns the answer text, or
#: None to decline (the walk goes on).
FallbackFunction = Callable[[Mapping[str, Any], str], "str | Awaitable[str | None] | None"]
#: Builds the ``httpx2.Client`` (or ``AsyncClient``) for a target made from ``base_url``.
HttpClientFactory = Callable[["Target"], Any]


@dataclass(frozen=True, slots=True)
class Runtime:
    """Collaborators of one resilient client, fixed when it is made."""

    clock: Clock = SYSTEM_CLOCK
    listeners: tuple[Listener, ...] = ()
    #: Ready clients for fallback targets, by target name (instead of ``base_url``).
    clients: Mapping[str, Any] = field(default_factory=dict)
    #: The code behind ``function`` steps, by the name the step gives.
    functions: Mapping[str, FallbackFunction] = field(default_factory=dict)
    #: Names the breaker for (base_url, model); None: one breaker per pair.
    breaker_key: Callable[[str, str | None], str] | None = None
    #: Builds the HTTP client of a target made from ``base_url``; None: the SDK's default.
    http_client: HttpClientFactory | None = None
    #: The Redis level of the answer cache, read from ``[shared]`` and the environment; None:
    #: the cache is this process's alone.
    shared_cache: SharedCacheSettings | None = None
