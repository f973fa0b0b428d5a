"""Shared breakers through ``resilient()``: slow calls, Retry-After, refusals and close, fleet-wide.

Each client made here is one "worker" (its own Redis link) on the fake upstream and the fake
clock; both shells run every scenario. Redis keeps its own (real) time, so a break is read from
the shared hash, never waited out.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import openai
import pytest
import redis

from resilient_openai import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy, breakers, health
from resilient_openai._policy import SharedPolicy
from resilient_openai.testing import Delay, Ok, Status

from ..conftest import Harness
from .conftest import wait_for


def _policy(redis_url: str, namespace: str, breaker: BreakerPolicy) -> Policy:
    """No retries; a healthy Redis given a long ``timeout``, so a busy machine is not a Redis fault."""
    shared = SharedPolicy(url=redis_url, namespace=namespace, timeout=1.0)
    return Policy(retry=RetryPolicy(rules={}), breaker=breaker, shared=shared)


def _name(client: Any) -> str:
    [snapshot] = health(client)["breakers"]
    name: str = snapshot["name"]
    return name


def _hash(redis_url: str, namespace: str, name: str) -> dict[str, str]:
    """The shared breaker's Redis hash, read directly."""
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found: dict[str, str] = store.hgetall(f"{namespace}:breaker:{name}")  # type: ignore[assignment]
        return found
    finally:
        store.close()


def _degraded(client: Any) -> bool:
    return bool(health(client)["status"] == "degraded")


def _refusal(harness: Harness, client: Any) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as refused:
        harness.chat(client)
    return refused.value


def _close(harness: Harness, *clients: Any) -> None:
    for client in clients:
        harness.run(client.close)


def _slow_calls(mode: Literal["consecutive", "ratio"], break_duration: float = 5.0) -> BreakerPolicy:
    """Tripped only by slow calls: half of at least 4 calls in 60 s slower than 1 s."""
    return BreakerPolicy(
        mode=mode, fail_max=100, failure_ratio=1.0, min_calls=4, window=60.0,
        slow_call_threshold=1.0, slow_call_ratio=0.5,
        break_duration=break_duration, break_max=max(break_duration, BreakerPolicy().break_max),
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["consecutive", "ratio"])
def test_slow_calls_spread_over_two_workers_trip_the_shared_breaker(
    harness: Harness, redis_url: str, namespace: str, mode: Literal["consecutive", "ratio"]
) -> None:
    """min_calls 4, half of them slow: two slow calls in each worker open the circuit for both."""
    breaker = _slow_calls(mode, break_duration=30.0)
    policy = _policy(redis_url, namespace, breaker)
    a, b = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Delay(2.0, then=Ok("slow")))
    for client in (a, a, b, b):  # each worker alone: 2 calls, under min_calls
        harness.chat(client)
    wait_for(lambda: _degraded(a) and _degraded(b))
    assert "slower than 1s" in _hash(redis_url, namespace, _name(a))["reason"]
    _refusal(harness, a)
    _refusal(harness, b)
    assert harness.upstream.count() == 4
    _close(harness, a, b)


@pytest.mark.parametrize("mode", ["consecutive", "ratio"])
def test_fast_calls_keep_the_shared_slow_call_window_closed(
    harness: Harness, redis_url: str, namespace: str, mode: Literal["consecutive", "ratio"]
) -> None:
    """Every call is counted in the window (no folding): one slow call in four stays under 0.5."""
    policy = _policy(redis_url, namespace, _slow_calls(mode))
    a, b = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Ok("fast"))
    for client in (a, a, b):
        harness.chat(client)
    harness.upstream.set_default("gpt-A", Delay(2.0, then=Ok("slow")))
    harness.chat(b)
    _close(harness, a, b)  # sends the last reports
    stored = _hash(redis_url, namespace, _name(a))
    assert stored.get("state", "closed") == "closed"
    assert sum(int(v) for k, v in stored.items() if k.startswith("w:")) == 4
    assert sum(int(v) for k, v in stored.items() if k.startswith("s:")) == 1


def test_a_servers_retry_after_lengthens_the_shared_break(
    harness: Harness, redis_url: str, namespace: str
) -> None:
    """A 503 asking for 10 s trips a 0.5 s breaker: Redis holds a 10 s break, every worker refuses."""
    policy = _policy(redis_url, namespace, BreakerPolicy(fail_max=1, break_duration=0.5, break_max=30.0))
    a, b = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Status(503, headers={"retry-after": "10"}))
    with pytest.raises(openai.InternalServerError):
        harness.chat(a)
    wait_for(lambda: _degraded(a))
    stored = _hash(redis_url, namespace, _name(a))
    assert float(stored["open_until"]) - float(stored["opened_at"]) == pytest.approx(10.0, abs=0.01)
    retry_after = _refusal(harness, b).retry_after
    assert retry_after is not None
    assert 9.0 < retry_after <= 10.0
    assert harness.upstream.count() == 1
    _close(harness, a, b)


def test_a_failed_probes_retry_after_lengthens_the_next_shared_break(
    harness: Harness, redis_url: str, namespace: str
) -> None:
    """The probe's 503 asks for 60 s: the reopened break is capped at break_max (5 s), not 0.2 s."""
    policy = _policy(redis_url, namespace, BreakerPolicy(fail_max=1, break_duration=0.1, break_max=5.0))
    client = harness.client(policy)
    harness.upstream.set_default("gpt-A", Status(503))
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)
    wait_for(lambda: _degraded(client))
    open_until = float(_hash(redis_url, namespace, _name(client))["open_until"])
    wait_for(lambda: _redis_time(redis_url) > open_until)  # Redis's own clock ends the break
    harness.clock.advance(0.2)  # and this worker's view of it
    harness.upstream.set_default("gpt-A", Status(503, headers={"retry-after": "60"}))
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)  # the probe
    # Its outcome goes out through the flusher, just after the call returns.
    wait_for(lambda: _hash(redis_url, namespace, _name(client)).get("reopens") == "1")
    reopened = _hash(redis_url, namespace, _name(client))
    assert float(reopened["open_until"]) - float(reopened["opened_at"]) == pytest.approx(5.0, abs=0.01)
    _close(harness, client)


def _redis_time(redis_url: str) -> float:
    store = redis.Redis.from_url(redis_url)
    try:
        seconds, micros = store.time()
        return seconds + micros / 1e6
    finally:
        store.close()


def test_a_shared_refusal_carries_the_breaker_retry_after_and_cause(
    harness: Harness, redis_url: str, namespace: str
) -> None:
    """Like a local refusal: name and retry_after; ``__cause__`` in the worker whose failure tripped it."""
    policy = _policy(redis_url, namespace, BreakerPolicy(fail_max=2, break_duration=5.0))
    a, b = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Status(503))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            harness.chat(a)
    wait_for(lambda: _degraded(a))
    name = _name(a)
    mine, theirs = _refusal(harness, a), _refusal(harness, b)
    for refused in (mine, theirs):
        assert refused.breaker == name
        assert refused.retry_after is not None
        assert 4.0 < refused.retry_after <= 5.0
    assert isinstance(mine.__cause__, openai.InternalServerError)
    assert theirs.__cause__ is None  # the failure happened in another worker
    breakers(a).close(name)
    wait_for(lambda: not _degraded(a))
    harness.upstream.set_default("gpt-A", Ok("back"))
    harness.chat(a)
    _close(harness, a, b)


def test_close_sends_the_last_batched_reports_and_stops_the_threads(
    harness: Harness, redis_url: str, namespace: str
) -> None:
    """Three successes just before close(): all three are in Redis when close() returns."""
    breaker = BreakerPolicy(mode="ratio", min_calls=100, window=60.0)
    client = harness.client(_policy(redis_url, namespace, breaker))
    harness.upstream.set_default("gpt-A", Ok("fine"))
    for _ in range(3):
        harness.chat(client)
    link = breakers(client).link
    assert link is not None
    harness.run(client.close)
    stored = _hash(redis_url, namespace, _name(client))
    assert sum(int(v) for k, v in stored.items() if k.startswith("w:")) == 3
    assert not any(thread.is_alive() for thread in link._threads)
    harness.run(client.close)  # a second close is harmless


def test_leaving_with_sends_the_last_reports(harness: Harness, redis_url: str, namespace: str) -> None:
    """The client as a context manager (``with`` / ``async with``): its exit flushes and stops too."""
    breaker = BreakerPolicy(mode="ratio", min_calls=100, window=60.0)
    client = harness.client(_policy(redis_url, namespace, breaker))
    harness.upstream.set_default("gpt-A", Ok("fine"))
    messages = [{"role": "user", "content": "hello"}]
    if harness.is_async:

        async def use() -> None:
            async with client:
                await client.chat.completions.create(model="gpt-A", messages=messages)

        asyncio.run(use())
    else:
        with client:
            client.chat.completions.create(model="gpt-A", messages=messages)
    stored = _hash(redis_url, namespace, _name(client))
    assert sum(int(v) for k, v in stored.items() if k.startswith("w:")) == 1
    link = breakers(client).link
    assert link is not None
    assert not any(thread.is_alive() for thread in link._threads)


def test_a_closed_clients_operator_actions_do_not_fail(
    harness: Harness, redis_url: str, namespace: str
) -> None:
    """After close() a new breaker is made without asking Redis (no error from a stopped link)."""
    client = harness.client(_policy(redis_url, namespace, BreakerPolicy()))
    harness.run(client.close)
    breakers(client).isolate("never-called")
    assert "never-called" in breakers(client)
