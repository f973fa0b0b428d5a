"""The values that travel through the chain: one :class:`Call`, and the :class:`Target` it is aimed at."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from .._provenance import AttemptRecord, Source

if TYPE_CHECKING:
    from openai._models import FinalRequestOptions

    from .._breaker import CircuitBreaker
    from .._classify import Classification
    from .._policy import RetryPolicy, Timeouts
    from ._stream import StreamWatch

__all__ = ["AsyncHandler", "Call", "Handler", "LiveTarget", "SendFn"]

SendFn = Callable[..., Any]


@dataclass(frozen=True, slots=True, eq=False)
class LiveTarget:
    """A client the chain can send to: the caller's own, another model on it, or another provider.

    ``send(cast_to, options, stream=..., stream_cls=...)`` is the SDK's own ``request`` with the
    SDK's retries off; ``name`` is the breaker's name; ``label`` is ``"primary"``, or the
    :class:`~resilient_openai._policy.Target`'s name.
    """

    name: str
    label: str
    source: Source
    send: SendFn
    client: Any
    retry: RetryPolicy
    timeouts: Timeouts
    breaker: CircuitBreaker | None
    model: str | None
    accepts_prefill: bool = False


@dataclass(slots=True, eq=False)
class Call:
    """One caller's request on its way through the chain.

    The outer layers fill in what the inner ones need (the target, the per-attempt options) and
    the inner ones report back what happened (attempt records, a live stream's watch).
    """

    operation: str
    requested_model: str | None
    body: Mapping[str, Any] | None
    cast_to: Any
    options: FinalRequestOptions
    stream: bool
    stream_cls: Any
    client: Any
    started: float
    deadline: float
    #: The read limit the caller set on the call or its client (seconds), if any.
    caller_timeout: float | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    target: LiveTarget | None = None
    has_fallback: bool = False
    attempt: int = 0
    send_options: FinalRequestOptions | None = None
    stream_watch: StreamWatch | None = None
    last_failure: Classification | None = None
    #: Validation estimated the prompt larger than the model's window.
    oversized: bool = False

    @property
    def model(self) -> str | None:
        """The model the current target is asked for."""
        target = self.target
        if target is not None and target.model is not None:
            return target.model
        return self.requested_model

    def describe_request(self) -> httpx2.Request:
        """A request naming this call's method and URL, for errors made without an HTTP exchange."""
        url = str(getattr(self.client, "base_url", "")) + self.options.url.lstrip("/")
        return httpx2.Request(self.options.method.upper(), url)

    def record(self, verdict: str, status: int | None, duration: float) -> None:
        """Append the outcome of the current attempt on the current target."""
        target = self.target
        self.attempts.append(
            AttemptRecord(
                target=target.name if target is not None else "?",
                model=self.model,
                attempt=self.attempt,
                verdict=verdict,
                status=status,
                duration=duration,
            )
        )


Handler = Callable[[Call], Any]
AsyncHandler = Callable[[Call], Awaitable[Any]]
