"""A stream's outcome reaches its breaker when the stream ends, not when it starts."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from resilient_openai import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy, breakers, health
from resilient_openai.testing import Cut, Delay, Ok, Stall, Status

from .conftest import Harness


def _client(harness: Harness) -> Any:
    policy = Policy(retry=RetryPolicy(rules={}), breaker=BreakerPolicy(fail_max=1, break_duration=30))
    return harness.client(policy)


def _state(client: Any) -> str:
    [snapshot] = health(client)["breakers"]
    return str(snapshot["state"])


def test_completed_stream_probe_closes_the_circuit(harness: Harness) -> None:
    """A half-open probe that is a stream closes the circuit once it completes."""
    client = _client(harness)
    harness.upstream.script("gpt-A", [Status(503)])
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)
    harness.clock.advance(30)
    _, _, error = harness.stream_chat(client)
    assert error is None
    assert _state(client) == "closed"


def test_cut_stream_counts_as_a_failure(harness: Harness) -> None:
    """A stream cut mid-answer is a failure for the breaker."""
    client = _client(harness)
    harness.upstream.set_default("gpt-A", Cut(5, tokens=20))
    _, _, error = harness.stream_chat(client)
    assert error is not None
    assert _state(client) == "open"
    with pytest.raises(CircuitOpenError):
        harness.chat(client)


def test_a_streamed_probe_closes_the_circuit_at_its_first_token(harness: Harness) -> None:
    """A half-open probe that is a stream is judged at its first token (the target answers), so
    it never holds the probe slot for the length of an answer, even if its caller abandons it."""
    client = _client(harness)
    harness.upstream.script("gpt-A", [Status(503)])
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)
    harness.clock.advance(30)
    harness.upstream.set_default("gpt-A", Ok(tokens=30))
    kwargs: Any = {"model": "gpt-A", "messages": [{"role": "user", "content": "x"}], "stream": True}
    if harness.is_async:

        async def read_one() -> None:
            stream = await client.chat.completions.create(**kwargs)
            await anext(aiter(stream))
            await stream.close()

        harness.run(read_one)
    else:
        stream = client.chat.completions.create(**kwargs)
        next(iter(stream))
        stream.close()
    assert _state(client) == "closed"
    _, _, error = harness.stream_chat(client)
    assert error is None


def test_manual_isolate_and_close(harness: Harness) -> None:
    """An operator can isolate a breaker (nothing is sent) and close it again."""
    client = _client(harness)
    harness.chat(client)
    [name] = [snapshot["name"] for snapshot in health(client)["breakers"]]
    breakers(client).isolate(name)
    with pytest.raises(CircuitOpenError):
        harness.chat(client)
    assert harness.upstream.count() == 1
    breakers(client).close(name)
    harness.chat(client)
    assert harness.upstream.count() == 2


def test_slow_first_token_trips_slow_call_breaker(harness: Harness) -> None:
    """Slow-call tripping judges a stream by its time to first token, not its total length."""
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(
            mode="ratio", min_calls=2, failure_ratio=1.0, slow_call_threshold=5.0, slow_call_ratio=0.5,
            break_duration=30,
        ),
    )  # fmt: skip
    client = harness.client(policy)
    harness.upstream.set_default("gpt-A", Stall(5, 8.0, tokens=10))
    for _ in range(2):  # fast first token, long pause later: not slow
        _, _, error = harness.stream_chat(client)
        assert error is None
    assert _state(client) == "closed"
    harness.upstream.set_default("gpt-A", Delay(8.0, then=Ok(tokens=3)))
    for _ in range(2):  # slow first token: slow calls
        harness.stream_chat(client)
    assert _state(client) == "open"
