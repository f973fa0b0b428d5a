"""The values that travel through the chain: one :class:`Call`, its :class:`LiveTarget`, and the
:class:`Outcome` of an attempt, which flows back up as a value with its classification."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._classify import Classification, Verdict
from .._provenance import AttemptRecord, Source

if TYPE_CHECKING:
    from .._breaker import AnyBreaker
    from .._budget import TargetBudget
    from .._policy import RetryPolicy, Timeouts
    from .._sdk import Options
    from ._watch import StreamHooks, StreamWatch

__all__ = ["AsyncHandler", "Call", "Handler", "LiveTarget", "Outcome"]

SendFn = Callable[..., Any]
_SUCCESS = Classification(Verdict.SUCCESS)


@dataclass(frozen=True, slots=True, eq=False)
class LiveTarget:
    """A client the chain can send to: the caller's own, another model on it, or another provider.

    ``send(cast_to, options, stream=..., stream_cls=...)`` is the SDK's own ``request`` with the
    SDK's retries off; ``name`` is the breaker's name; ``label`` is ``"primary"``, or the
    :class:`~resilient_openai.Target`'s name; ``budget`` is the target's retry budget (None: off).
    """

    name: str
    label: str
    source: Source
    send: SendFn
    client: Any
    retry: RetryPolicy
    timeouts: Timeouts
    breaker: AnyBreaker | None
    budget: TargetBudget | None
    model: str | None
    accepts_prefill: bool = False


@dataclass(slots=True)  # not frozen: made for every attempt, and frozen slots cost twice as much
class Outcome:
    """How an attempt ended, as a value: the SDK's result, or the error with its classification.

    The classification is made once, where the failure is caught, and read by every layer above.
    ``watch`` is set for a live stream, whose real outcome is only known when it ends. ``body``
    is the JSON a plain answer was parsed from, as the upstream sent it, when the client keeps
    it for the cache.
    """

    result: Any = None
    error: Exception | None = None
    judged: Classification = _SUCCESS
    watch: StreamWatch | None = None
    body: bytes | None = None

    @property
    def ok(self) -> bool:
        """The attempt produced a result."""
        return self.error is None


@dataclass(slots=True, eq=False)
class Call:
    """One caller's request on its way through the chain.

    The first block is fixed when the call is made. Then each field below has one owner: the
    fallback layer aims the call (``target``, ``has_next``, ``hooks``), the retry layer counts
    ``attempt`` and stamps ``attempt_started``, and every attempt appends its record to
    ``attempts``.
    """

    operation: str
    requested_model: str | None
    body: Mapping[str, Any] | None
    cast_to: Any
    options: Options
    stream: bool
    stream_cls: Any
    client: Any
    started: float
    deadline: float
    #: The read limit the caller set on the call or its client (seconds), if any.
    caller_timeout: float | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    target: LiveTarget | None = None
    #: The fallback walk has another step after this target.
    has_next: bool = False
    hooks: StreamHooks | None = None
    attempt: int = 0
    #: When the current attempt began (clock time), read once by the layers below retry.
    attempt_started: float = 0.0
    #: The caller's own request options; ``options`` is what the current step sends (without the
    #: caller's credential headers when the step is another provider).
    caller_options: Options | None = None
    #: Real seconds this call has waited on Redis so far (first reads of shared breakers, shared
    #: cache reads): together they wait at most ``shared.timeout``, see :meth:`redis_left`.
    redis_waited: float = 0.0

    @property
    def model(self) -> str | None:
        """The model the current target is asked for."""
        target = self.target
        if target is not None and target.model is not None:
            return target.model
        return self.requested_model

    def first_limit(self) -> float:
        """The current attempt's own limit: to the answer (``attempt``), or for a stream to its
        first token (``first_token``), cut to the read limit the caller set, if shorter."""
        target = self.target
        assert target is not None
        limits = target.timeouts
        limit = limits.first_token if self.stream else limits.attempt
        own = self.caller_timeout
        return limit if own is None or own >= limit else own

    def redis_left(self, timeout: float) -> float:
        """What this call may still wait on Redis, of the one ``timeout`` all its reads share.

        Real seconds (``time.monotonic``), not the injected clock's: they bound waits on
        sockets and threads, which a fake clock does not see.
        """
        return max(timeout - self.redis_waited, 0.0)

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


#: The rest of the chain below a layer. Below the fallback layer it answers with an :class:`Outcome`.
Handler = Callable[[Call], Any]
AsyncHandler = Callable[[Call], Awaitable[Any]]
