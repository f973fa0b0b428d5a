"""Outage behaviour an operator signs off: fail over fast, come back fast, answer at once.

Each test is one fault seen through the public API against the fake upstream, on the fake clock:
what the caller gets, after how long, and how many requests reached each target.
"""

from __future__ import annotations

import openai
import pytest

from resilient_openai import (
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    Route,
    Timeouts,
    provenance,
)
from resilient_openai.testing import Delay, Ok, Reset, Silence, Status

from .conftest import Harness

BACKUP = FallbackStep(kind="model", model="gpt-B")
LIMITS = Timeouts(total=60.0, attempt=10.0, first_token=10.0, stream_idle=10.0)


def _route(*steps: FallbackStep) -> FallbackPolicy:
    return FallbackPolicy(routes={"gpt-A": Route(steps=steps)})


def test_a_silent_primary_is_waited_on_once_when_the_route_goes_on(harness: Harness) -> None:
    """No answer within the attempt limit: the backup is asked at once, not after two more waits."""
    harness.upstream.set_default("gpt-A", Silence())
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    started = harness.clock.now()
    answer = harness.chat(harness.client(Policy(timeouts=LIMITS, fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "backup"
    assert harness.upstream.count(model="gpt-A") == 1
    assert harness.clock.now() - started == pytest.approx(10.0)
    record = provenance(answer)
    assert record is not None
    assert (record.source, record.reason) == ("fallback_model", "timeout")


def test_a_hang_up_after_a_long_silence_is_not_paid_again(harness: Harness) -> None:
    """The upstream held the request for 8 s of a 10 s limit, then dropped it: fail over at once."""
    harness.upstream.set_default("gpt-A", Delay(8.0, then=Reset()))
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    answer = harness.chat(harness.client(Policy(timeouts=LIMITS, fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "backup"
    assert harness.upstream.count(model="gpt-A") == 1


def test_a_quick_connection_error_is_still_retried(harness: Harness) -> None:
    """A drop that cost nothing is worth another try on the same target."""
    harness.upstream.script("gpt-A", [Reset()])
    harness.upstream.set_default("gpt-A", Ok(text="primary"))
    answer = harness.chat(harness.client(Policy(timeouts=LIMITS, fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "primary"
    assert harness.upstream.count(model="gpt-A") == 2


def test_without_a_next_step_a_timeout_is_retried_as_the_sdk_does(harness: Harness) -> None:
    """Nowhere else to go: the SDK's own policy (three attempts) stays."""
    harness.upstream.set_default("gpt-A", Silence())
    with pytest.raises(openai.APITimeoutError):
        harness.chat(harness.client(Policy(timeouts=LIMITS)))
    assert harness.upstream.count(model="gpt-A") == 3


def test_an_open_circuit_answers_at_once_by_default(harness: Harness) -> None:
    """No fallback and an open circuit: CircuitOpenError immediately, with retry_after."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(Policy())
    for _ in range(2):  # 3 attempts each: the fifth consecutive failure opens the circuit
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)
    sent = harness.upstream.count()
    started = harness.clock.now()
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert harness.clock.now() == started
    assert harness.upstream.count() == sent
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 5.0


def test_a_day_long_retry_after_holds_the_circuit_no_longer_than_break_max(harness: Harness) -> None:
    """``Retry-After: 86400`` may lengthen a break, never past ``break_max`` (20 s by default)."""
    harness.upstream.set_default("gpt-A", Status(503, headers={"retry-after": "86400"}))
    client = harness.client(Policy())
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert caught.value.retry_after == pytest.approx(20.0)


def test_defaults_ride_out_a_minute_long_outage_and_come_back_quickly(harness: Harness) -> None:
    """503 for 60 s, a call every 4 s, a fallback configured, default policy otherwise: every call
    is answered, once the circuit is open the primary sees one probe per open period, and it
    serves again within 30 s of its recovery."""
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    client = harness.client(Policy(fallback=_route(BACKUP)))
    start = harness.clock.now()
    primary_back: float | None = None
    requests_while_open = 0
    for tick in range(30):
        at = start + tick * 4.0
        harness.clock.advance(max(at - harness.clock.now(), 0.0))
        down = harness.clock.now() - start < 60.0
        harness.upstream.set_default("gpt-A", Status(503) if down else Ok(text="primary"))
        before = harness.upstream.count(model="gpt-A")
        answer = harness.chat(client)  # never raises: every call is answered
        sent = harness.upstream.count(model="gpt-A") - before
        record = provenance(answer)
        assert record is not None
        if record.source == "upstream" and primary_back is None:
            primary_back = harness.clock.now() - start
        if tick >= 2 and down:  # the circuit opened during the second call
            requests_while_open += sent
            assert sent <= 1
    assert primary_back is not None
    assert primary_back - 60.0 <= 30.0
    # Breaks of 5, 10, 20, 20 ... s over the rest of the outage: a handful of probes, not one per call.
    assert requests_while_open <= 5
