"""The errors resilient-openai itself raises.

When the SDK's own exception is the honest answer (a 400, a final 503) it is re-raised untouched.
Everything we originate derives from :class:`ResilienceError`, which derives from
``openai.OpenAIError`` so existing ``except openai.OpenAIError`` handlers keep working, and
carries the context an operator needs: breaker name, ``retry_after``, attempts, operation, model.
"""

from __future__ import annotations

from collections.abc import Sequence

import openai

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceededError",
    "IncompleteStreamError",
    "RequestRejectedError",
    "ResilienceError",
    "UnanswerableError",
]


class ResilienceError(openai.OpenAIError):
    """Base of every error this library originates."""

    def __init__(
        self,
        message: str,
        *,
        breaker: str | None = None,
        retry_after: float | None = None,
        attempts: int = 0,
        operation: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.breaker = breaker
        self.retry_after = retry_after
        self.attempts = attempts
        self.operation = operation
        self.model = model


class CircuitOpenError(ResilienceError):
    """The target's circuit is open (or its half-open probes are taken): no request was sent.

    ``retry_after`` is how long, in seconds, until the breaker admits a probe again. The failure
    that opened the circuit is chained as ``__cause__`` when the breaker still knows it.
    """


class DeadlineExceededError(ResilienceError):
    """The call's total deadline ran out before any target answered and no fallback could."""


class IncompleteStreamError(ResilienceError):
    """A stream ended early, stalled or became unreadable after chunks reached the caller.

    Never a silent normal end: ``partial_text`` holds what was delivered, ``chunks`` how many
    chunks, ``reason`` one of ``"cut"``, ``"stalled"``, ``"unreadable"``, ``"truncated"``,
    ``"deadline"``, ``"upstream_error"`` (an error event mid-stream).
    """

    def __init__(
        self,
        message: str,
        *,
        partial_text: str,
        chunks: int,
        reason: str,
        breaker: str | None = None,
        attempts: int = 0,
        operation: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message, breaker=breaker, attempts=attempts, operation=operation, model=model)
        self.partial_text = partial_text
        self.chunks = chunks
        self.reason = reason


class RequestRejectedError(ResilienceError):
    """The request cannot succeed as written (checked before sending); nothing was sent.

    ``rule`` names the validation rule, e.g. ``"messages_present"`` or ``"context_window"``.
    """

    def __init__(self, message: str, *, rule: str, operation: str | None = None, model: str | None = None):
        super().__init__(message, operation=operation, model=model)
        self.rule = rule


class ConfigError(ResilienceError, ValueError):
    """The policy is invalid. ``problems`` lists every mistake, one line each, naming the key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid resilience policy ({len(self.problems)} problem(s)):\n{lines}")


class UnanswerableError(ResilienceError):
    """The target failed and no fallback step could answer the request *as asked*.

    A canned reply or a function's text is never served in place of the JSON a structured
    request asks for, or of the tool call it forces. ``reason`` says why each local step was
    skipped; the target's failure is chained as ``__cause__``, and ``provenance(error)`` lists
    the attempts.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        attempts: int = 0,
        operation: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message, attempts=attempts, operation=operation, model=model)
        self.reason = reason
