"""The circuit breaker inside the chain, through the real SDK: open means silence upstream."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from resilient_openai import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy, provenance
from resilient_openai.testing import Hold, Ok, Status

from .conftest import Harness

NO_RETRY = RetryPolicy(rules={})


def _policy(harness: Harness, **breaker: Any) -> Policy:
    return Policy(retry=NO_RETRY, breaker=BreakerPolicy(**breaker))


def _fail(harness: Harness, client: Any, times: int) -> None:
    for _ in range(times):
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)


def test_open_circuit_sends_nothing(harness: Harness) -> None:
    """Once open, any number of callers get CircuitOpenError and the upstream sees nothing."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, fail_max=3, break_duration=30))
    _fail(harness, client, 3)
    before = harness.upstream.count()
    for _ in range(20):
        with pytest.raises(CircuitOpenError) as caught:
            harness.chat(client)
    assert harness.upstream.count() == before
    error = caught.value
    assert error.breaker is not None
    assert "gpt-A" in error.breaker
    assert error.retry_after == pytest.approx(30.0)


def test_retry_after_counts_down_with_the_clock(harness: Harness) -> None:
    """The open error's retry_after is the remaining break, to the fake clock's tick."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, fail_max=1, break_duration=30))
    _fail(harness, client, 1)
    harness.clock.advance(12.5)
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert caught.value.retry_after == pytest.approx(17.5)


def test_caller_error_neither_resets_nor_counts(harness: Harness) -> None:
    """4 x 503, one 400, one 503 with fail_max=5: closed after the 400, open after the sixth."""
    faults = [Status(503)] * 4 + [Status(400), Status(503)]
    harness.upstream.script("gpt-A", faults)
    client = harness.client(_policy(harness, fail_max=5))
    _fail(harness, client, 4)
    with pytest.raises(openai.BadRequestError):
        harness.chat(client)
    _fail(harness, client, 1)
    with pytest.raises(CircuitOpenError):
        harness.chat(client)
    assert harness.upstream.count() == 6


def test_half_open_probe_closes_the_circuit(harness: Harness) -> None:
    """After the break one probe goes through; its success closes the circuit."""
    harness.upstream.script("gpt-A", [Status(503), Ok()])
    client = harness.client(_policy(harness, fail_max=1, break_duration=10))
    _fail(harness, client, 1)
    harness.clock.advance(10)
    result = harness.chat(client)
    assert provenance(result) is not None
    harness.chat(client)
    assert harness.upstream.count() == 3


def test_retry_stops_at_an_open_circuit(harness: Harness) -> None:
    """The breaker sees every attempt: once it opens mid-retry, the retries stop."""
    harness.upstream.set_default("gpt-A", Status(503))
    policy = Policy(breaker=BreakerPolicy(fail_max=2, break_duration=300))
    client = harness.client(policy)
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)
    assert harness.upstream.count() == 2


def test_half_open_admits_exactly_one_of_fifty_threads(upstream: Any, clock: Any) -> None:
    """50 concurrent callers after the break: one reaches the upstream, 49 are answered at once."""
    harness = Harness("sync", upstream, clock)
    client = harness.client(_policy(harness, fail_max=1, break_duration=5))
    upstream.script("gpt-A", [Status(503)])
    _fail(harness, client, 1)
    clock.advance(5)
    gate = threading.Event()
    upstream.script("gpt-A", [Hold(gate)])
    barrier = threading.Barrier(50)

    def caller() -> str:
        barrier.wait()
        try:
            harness.chat(client)
        except CircuitOpenError:
            return "rejected"
        return "answered"

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(caller) for _ in range(50)]
        rejected = 0
        deadline = time.monotonic() + 5
        while rejected < 49 and time.monotonic() < deadline:
            rejected = sum(1 for f in futures if f.done() and f.result() == "rejected")
            time.sleep(0.001)
        assert rejected == 49  # all answered while the probe is still held upstream
        gate.set()
        outcomes = [f.result() for f in futures]
    assert outcomes.count("answered") == 1
    assert upstream.count() == 2


def test_threads_are_not_serialized_by_the_breaker(upstream: Any, clock: Any) -> None:
    """10 threads are inside the upstream at the same time: no lock is held across a call."""
    harness = Harness("sync", upstream, clock)
    client = harness.client()
    gate = threading.Event()
    upstream.set_default("gpt-A", Hold(gate))
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(harness.chat, client) for _ in range(10)]
        deadline = time.monotonic() + 5
        while upstream.count() < 10 and time.monotonic() < deadline:
            time.sleep(0.001)
        in_flight = upstream.count()
        gate.set()
        for future in futures:
            future.result()
    assert in_flight == 10


def test_tasks_are_not_serialized_by_the_breaker(upstream: Any, clock: Any) -> None:
    """100 tasks are inside the upstream at the same time through one breaker."""
    harness = Harness("async", upstream, clock)
    client = harness.client()
    gate = threading.Event()
    upstream.set_default("gpt-A", Hold(gate))

    async def scenario() -> int:
        tasks = [
            asyncio.create_task(
                client.chat.completions.create(model="gpt-A", messages=[{"role": "user", "content": "x"}])
            )
            for _ in range(100)
        ]
        for _ in range(5000):
            if upstream.count() >= 100:
                break
            await asyncio.sleep(0.001)
        seen: int = upstream.count()
        gate.set()
        await asyncio.gather(*tasks)
        return seen

    assert asyncio.run(scenario()) == 100


def test_racing_failures_are_counted_exactly(upstream: Any, clock: Any) -> None:
    """Failures racing from 8 threads are all counted: the circuit opens at exactly fail_max."""
    harness = Harness("sync", upstream, clock)
    client = harness.client(_policy(harness, fail_max=8, break_duration=60))
    upstream.set_default("gpt-A", Status(503))
    barrier = threading.Barrier(8)

    def caller() -> None:
        barrier.wait()
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(caller) for _ in range(8)]:
            future.result()
    with pytest.raises(CircuitOpenError):
        harness.chat(client)
    assert upstream.count() == 8
