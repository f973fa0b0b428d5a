"""Test support that ships with resilient-openai: a clock that never sleeps and a fake upstream.

:class:`FakeUpstream` stands in for the OpenAI API (in process, or on a loopback socket) and
answers each request as scripted with fault values (:data:`Fault` is their union: :class:`Ok`,
:class:`Status`, :class:`Garbage`, :class:`Delay`, :class:`Hold`, :class:`Reset`,
:class:`Silence`, :class:`Cut`, :class:`Stall`, :class:`Malformed`, :class:`OneOf`);
:class:`FakeClock` makes every wait, the fake's and the library's, instant and observable. Use
both in your own tests::

    upstream = FakeUpstream()
    upstream.script("gpt-4o-mini", [Status(503), Ok("hello")])
"""

from ._clock import FakeClock
from ._faults import Cut, Delay, Fault, Garbage, Hold, Malformed, Ok, OneOf, Reset, Silence, Stall, Status
from ._upstream import FakeUpstream, RecordedRequest

__all__ = [
    "Cut",
    "Delay",
    "FakeClock",
    "FakeUpstream",
    "Fault",
    "Garbage",
    "Hold",
    "Malformed",
    "Ok",
    "OneOf",
    "RecordedRequest",
    "Reset",
    "Silence",
    "Stall",
    "Status",
]
