"""Test support that ships with resilient-openai: a clock that never sleeps and a fake upstream.

:class:`FakeUpstream` stands in for the OpenAI API (in process, or on a loopback socket) and
answers each request as scripted with :class:`Fault` values; :class:`FakeClock` makes every wait,
the fake's and the library's, instant and observable. Use both in your own tests::

    upstream = FakeUpstream()
    upstream.script("gpt-4o-mini", [Fault.status(503), Fault.ok("hello")])
"""

from ._clock import FakeClock
from ._upstream import FakeUpstream, Fault, RecordedRequest

__all__ = ["FakeClock", "FakeUpstream", "Fault", "RecordedRequest"]
