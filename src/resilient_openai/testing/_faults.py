"""How the fake upstream answers one request: small immutable fault values, joined in :data:`Fault`.

Faults are values, so one instance can be scripted many times:
``upstream.script("gpt-4o", [Status(503), Reset(), Ok("hi")])``. What each one means on the wire
is decided by :class:`~resilient_openai.testing.FakeUpstream`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, get_args

__all__ = [
    "FAULTS",
    "Breakage",
    "Cut",
    "Delay",
    "Fault",
    "Garbage",
    "Hold",
    "Malformed",
    "Ok",
    "OneOf",
    "Reset",
    "Silence",
    "Stall",
    "Status",
]


class _Readable:
    """Checks a fault's numbers are >= 0, and reprs it as the shortest call that builds it."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for spec in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            if isinstance(value, int | float) and not value >= 0:
                raise ValueError(f"{spec.name} must be >= 0, got {value}")

    def __repr__(self) -> str:
        """Required fields by position, then the fields that differ from their default."""
        args = []
        for spec in fields(self):  # type: ignore[arg-type]
            if not spec.init:
                continue
            value = getattr(self, spec.name)
            shown = dict(value) if isinstance(value, MappingProxyType) else value
            if spec.default is MISSING and spec.default_factory is MISSING:
                args.append(repr(shown))
            elif value != (spec.default if spec.default_factory is MISSING else spec.default_factory()):
                args.append(f"{spec.name}={shown!r}")
        return f"{type(self).__name__}({', '.join(args)})"


@dataclass(frozen=True, slots=True, repr=False)
class Ok(_Readable):
    """A normal answer: JSON, or a clean stream when the request streams.

    ``text`` defaults to ``"tok0 tok1 ... tok{tokens-1}"``; ``model`` answers with another model
    name than the one asked for; ``latency`` is a wait before the headers. For a stream,
    ``done=False`` leaves out the chat ``data: [DONE]`` (for the Responses API, which sends no
    ``[DONE]``, the final ``response.completed`` event) and the body ends cleanly; ``usage``
    forces the chat usage chunk on or off (``None`` follows ``stream_options.include_usage``).
    """

    text: str | None = None
    tokens: int = 12
    model: str | None = None
    latency: float = 0.0
    done: bool = True
    usage: bool | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Status(_Readable):
    """An HTTP error with OpenAI's body ``{"error": {message, type, param, code}}``.

    ``code_str`` is ``error.code`` (e.g. ``"insufficient_quota"``, ``"context_length_exceeded"``);
    ``type`` defaults to the one OpenAI uses for that status; ``headers`` are added to the
    response, e.g. ``{"retry-after": "2"}``.
    """

    code: int
    code_str: str | None = None
    type: str | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"Status needs a 4xx or 5xx code, got {self.code}")
        lowered = {str(name).lower(): str(value) for name, value in self.headers.items()}
        object.__setattr__(self, "headers", MappingProxyType(lowered))


@dataclass(frozen=True, slots=True, repr=False)
class Garbage(_Readable):
    """An answer whose body is not what the SDK expects, sent as is: a *malformed* success.

    ``Garbage("<html>Bad gateway</html>")`` is a 200 whose body is HTML;
    ``Garbage({"id": "x", "object": "chat.completion"})`` a 200 JSON object lacking ``choices``.
    """

    body: str | bytes | Mapping[str, Any]


@dataclass(frozen=True, slots=True, repr=False)
class Delay(_Readable):
    """Wait ``seconds`` before the headers, then answer as ``then``.

    In process, a wait longer than the request's read timeout advances the clock by the timeout
    and raises ``httpx2.ReadTimeout``, as a real client would.
    """

    seconds: float
    then: Fault = Ok()


@dataclass(frozen=True, slots=True, repr=False)
class Hold(_Readable):
    """Block before the headers until ``event`` is set, then answer as ``then``.

    For concurrency tests: requests pile up in flight until the test releases them. The async
    transport polls the event and never blocks the event loop. No timeout applies.
    """

    event: threading.Event = field(compare=False)
    then: Fault = Ok()


@dataclass(frozen=True, slots=True, repr=False)
class Reset(_Readable):
    """The connection drops before any header (``httpx2.RemoteProtocolError``)."""


@dataclass(frozen=True, slots=True, repr=False)
class Silence(_Readable):
    """Never answer: in process the request times out after its read timeout."""


# The body faults below count content chunks (token deltas) already sent. The opening events (role
# chunk, ``response.created`` ...) go out with the first token; a position past the last token
# applies just after it. For a non-streaming request they break the JSON body instead.


@dataclass(frozen=True, slots=True, repr=False)
class Cut(_Readable):
    """An answer whose connection is cut after ``after`` content chunks (``RemoteProtocolError``).

    ``Cut(0)`` delivers no event at all; a JSON body is cut halfway.
    """

    after: int
    tokens: int = 60
    text: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Stall(_Readable):
    """An answer that pauses ``seconds`` after ``after`` content chunks (a JSON body: before it).

    In process, a pause longer than the read timeout *current at that moment* raises
    ``ReadTimeout``; ``Stall(0, 5.0)`` is a slow first token.
    """

    after: int
    seconds: float
    tokens: int = 60
    text: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Malformed(_Readable):
    """An answer whose content chunk number ``at`` is an invalid-JSON event (a JSON body: truncated)."""

    at: int
    tokens: int = 60
    text: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class OneOf(_Readable):
    """Each request it answers takes one of ``faults`` at random: a mix for sustained chaos.

    The draw is uniform (list a fault several times to weight it), from a generator seeded with
    ``seed``, so a run is repeatable when its requests arrive in the same order. A request's
    record names the fault drawn, the very instance listed here.
    """

    faults: tuple[Fault, ...]
    seed: int | str = 0
    _rng: random.Random = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.faults:
            raise ValueError("OneOf needs at least one fault")
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def draw(self) -> Fault:
        """One of the faults, at random (a nested :class:`OneOf` draws again)."""
        fault = self.faults[self._rng.randrange(len(self.faults))]
        return fault.draw() if isinstance(fault, OneOf) else fault


Fault = Ok | Status | Garbage | Delay | Hold | Reset | Silence | Cut | Stall | Malformed | OneOf
"""How the fake upstream answers one request: one of the fault values above."""

FAULTS = get_args(Fault)
"""The fault classes, for ``isinstance``."""

Breakage = Cut | Stall | Malformed
"""A fault that breaks an otherwise normal answer's body."""
