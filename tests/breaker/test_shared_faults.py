"""Shared breakers when Redis fails: down at start-up, killed mid-run, slow, restarted empty.

Each fault runs on a private ``redis-server`` (started on a free port, stopped by its pid), so the
shared test Redis is never disturbed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

import httpx2
import openai
import pytest
import redis
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from resilient_openai import CircuitOpenError, ConfigError, Policy, RetryPolicy, breakers, resilient
from resilient_openai._breaker import SharedCircuitBreaker
from resilient_openai._breaker._redis import RECONNECT_INTERVAL, REFRESH_INTERVAL
from resilient_openai._classify import Verdict
from resilient_openai._policy import BreakerPolicy, SharedPolicy
from resilient_openai.testing import FakeUpstream, Ok, Status

from ..conftest import Harness
from .conftest import MakeRegistry, PrivateRedis, probe_after_break, wait_for

T = TypeVar("T")
FAST = BreakerPolicy(fail_max=3, break_duration=0.2, break_max=1.0)
#: How long after Redis answers again every worker is back on the shared state.
RESYNC_BOUND = RECONNECT_INTERVAL + REFRESH_INTERVAL


def _unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _shared(make: MakeRegistry, **kw: object) -> SharedCircuitBreaker:
    breaker = make(FAST, **kw).get("target")
    assert isinstance(breaker, SharedCircuitBreaker)
    return breaker


def _fail(breaker: SharedCircuitBreaker) -> None:
    breaker.acquire().record(Verdict.SERVER_ERROR, duration=0.01)


MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _client(upstream: FakeUpstream, policy: Policy) -> openai.OpenAI:
    http = httpx2.Client(transport=upstream.transport())
    return resilient(
        openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1", http_client=http), policy
    )


def _async_client(upstream: FakeUpstream, policy: Policy) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=upstream.async_transport())
    sdk = openai.AsyncOpenAI(api_key="sk-test", base_url="http://fake.test/v1", http_client=http)
    return resilient(sdk, policy)


def _outage(private_redis: PrivateRedis, namespace: str, *, fail_max: int) -> tuple[FakeUpstream, Policy]:
    """An upstream failing model ``m`` with 500s, and a policy sharing its breaker (5 s break)."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(fail_max=fail_max, break_duration=5.0),
        shared=SharedPolicy(url=private_redis.url, namespace=namespace),
    )
    return upstream, policy


def _trip(client: openai.OpenAI, fail_max: int) -> None:
    """Fail ``fail_max`` calls of ``client`` and wait until the trip has reached Redis."""
    for _ in range(fail_max):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=MESSAGES)
    wait_for(lambda: [b.state for b in breakers(client)] == ["open"])


async def _opened_and_over(client: openai.AsyncOpenAI, fail_max: int) -> None:
    """Fail ``fail_max`` calls (the circuit opens), then wait out its 0.1 s break."""
    for _ in range(fail_max):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
    await asyncio.sleep(0.15)


async def _ticking(work: Awaitable[T]) -> tuple[T | Exception, int, float]:
    """Await ``work`` while a task counts event-loop ticks (one per 10 ms): what it gave or
    raised, the ticks, and the seconds it took."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    start = time.monotonic()
    try:
        answer: T | Exception = await work
    except Exception as exc:
        answer = exc
    took = time.monotonic() - start
    ticker.cancel()
    return answer, ticks, took


def _timed_acquire(breaker: SharedCircuitBreaker) -> tuple[str, float]:
    """``"admitted"`` or ``"refused"``, and how long acquiring took."""
    start = time.monotonic()
    try:
        breaker.acquire().record(Verdict.SUCCESS, duration=0.01)
        outcome = "admitted"
    except CircuitOpenError:
        outcome = "refused"
    return outcome, time.monotonic() - start


@pytest.mark.parametrize(("mode", "expected"), [("closed", "admitted"), ("open", "refused")])
def test_redis_down_at_start_up_follows_on_unavailable(
    make_registry: MakeRegistry, mode: str, expected: str
) -> None:
    """Nothing listens: no error at start-up, and calls are admitted or refused at once."""
    breaker = _shared(make_registry, url=_unused_url(), on_unavailable=mode)
    assert not breaker._link.up
    for _ in range(5):
        outcome, took = _timed_acquire(breaker)
        assert outcome == expected
        assert took < 0.05


def test_redis_down_at_start_up_local_decides_alone(make_registry: MakeRegistry) -> None:
    """on_unavailable local: the in-process breaker trips after this worker's own fail_max."""
    breaker = _shared(make_registry, url=_unused_url(), on_unavailable="local")
    for _ in range(3):
        _fail(breaker)
    assert breaker.state == "open"
    assert _timed_acquire(breaker)[0] == "refused"


def test_redis_killed_mid_run_then_restarted_empty(
    make_registry: MakeRegistry, private_redis: PrivateRedis
) -> None:
    """Killed: calls go on locally from the last view, no redis-py error; restarted empty: back in
    sync within the bound."""
    a = _shared(make_registry, url=private_redis.url)
    b = _shared(make_registry, url=private_redis.url)
    for _ in range(3):
        _fail(a)
    wait_for(lambda: b.state == "open")
    private_redis.stop()
    for _ in range(20):  # the first call or two find out; none waits, none sees redis-py
        assert _timed_acquire(b)[1] < 0.1
    wait_for(lambda: not b._link.up)
    # This worker decides alone now, from the last shared view: open until the break ends, then a
    # probe of its own closes it.
    wait_for(lambda: _timed_acquire(b)[0] == "admitted")
    assert b.state == "closed"
    for _ in range(3):
        _fail(b)
    assert b.state == "open"
    private_redis.start()
    took = wait_for(lambda: a._link.up and b._link.up)
    assert took < RESYNC_BOUND + 0.1
    # Redis forgot everything: closed for both, and failures count together again.
    assert a.state == b.state == "closed"
    assert _timed_acquire(b)[0] == "admitted"
    time.sleep(0.25)  # both listeners resubscribed (they retry every 0.25 s)
    for breaker in (a, b, a):
        _fail(breaker)
    wait_for(lambda: a.state == "open" and b.state == "open")


def test_a_flushed_redis_is_followed_within_the_refresh_interval(
    make_registry: MakeRegistry, private_redis: PrivateRedis
) -> None:
    """FLUSHALL after a trip and a close: the generation went back, and trips work again."""
    a = _shared(make_registry, url=private_redis.url)
    b = _shared(make_registry, url=private_redis.url)
    for _ in range(3):
        _fail(a)
    wait_for(lambda: b.state == "open")
    a.close()
    wait_for(lambda: b.state == "closed")
    admin = redis.Redis.from_url(private_redis.url)
    admin.flushall()
    admin.close()
    time.sleep(REFRESH_INTERVAL + 0.1)
    for breaker in (a, b, a):
        _fail(breaker)
    wait_for(lambda: a.state == "open" and b.state == "open")


@pytest.mark.parametrize("then", ["isolate", "trip"])
def test_a_hash_restored_to_an_older_copy_is_followed_within_the_refresh_interval(
    make_registry: MakeRegistry, private_redis: PrivateRedis, then: str
) -> None:
    """Redis goes back to an older copy of the breaker (a snapshot restored, a failover that
    lost writes): the workers that saw newer states take the restored one at their next refresh,
    instead of staying isolated or open on a state Redis no longer holds."""
    a = _shared(make_registry, url=private_redis.url)
    b = _shared(make_registry, url=private_redis.url)
    _fail(a)  # the hash exists, closed, with a version
    admin = redis.Redis.from_url(private_redis.url)
    key = a._link.key(a.name)
    wait_for(lambda: admin.exists(key) == 1)
    closed = admin.dump(key)
    assert isinstance(closed, bytes)
    if then == "isolate":
        a.isolate()
    else:
        for _ in range(3):
            _fail(a)
    wait_for(lambda: a.state == b.state != "closed")
    admin.restore(key, 0, closed, replace=True)
    admin.close()
    took = wait_for(lambda: a.state == b.state == "closed")
    assert took < REFRESH_INTERVAL + 0.2
    assert _timed_acquire(b)[0] == "admitted"


def test_a_key_redis_refuses_leaves_the_other_breakers_shared(
    make_registry: MakeRegistry, redis_url: str, namespace: str
) -> None:
    """Something else sits under one breaker's key (Redis answers WRONGTYPE): that breaker
    decides alone (``on_unavailable = "local"``: it still trips), the link stays up, the other
    breakers stay shared, and once the key is cleared the breaker is shared again."""
    admin = redis.Redis.from_url(redis_url)
    admin.set(f"{namespace}:breaker:bad", "not a hash")
    a, b = make_registry(FAST), make_registry(FAST)
    bad, good, good_b = a.get("bad"), a.get("good"), b.get("good")
    assert isinstance(bad, SharedCircuitBreaker)
    assert isinstance(good, SharedCircuitBreaker)
    for _ in range(3):
        bad.acquire().record(Verdict.SERVER_ERROR, duration=0.01)
    assert bad.state == "open"  # its own, in-process breaker
    time.sleep(REFRESH_INTERVAL + 0.1)  # a refresh, with the refused key among the others
    assert a.link is not None
    assert a.link.up
    for _ in range(3):
        _fail(good)
    wait_for(lambda: good_b.state == "open")  # shared as ever
    admin.delete(f"{namespace}:breaker:bad")
    admin.close()
    wait_for(lambda: bad.state == "closed", within=REFRESH_INTERVAL + 0.5)  # the shared (empty) state
    assert bad.acquire() is not None


def test_slow_redis_never_holds_a_call_past_the_timeout(
    make_registry: MakeRegistry, private_redis: PrivateRedis
) -> None:
    """Redis paused (CLIENT PAUSE) when a call must ask it: the call waits at most ``timeout``."""
    breaker = _shared(make_registry, url=private_redis.url, timeout=0.05)
    for _ in range(3):
        _fail(breaker)
    wait_for(lambda: breaker.state == "open")
    time.sleep(0.21)  # the break is over: the next call asks Redis for a probe slot
    admin = redis.Redis.from_url(private_redis.url)
    admin.client_pause(1000)
    outcome, took = _timed_acquire(breaker)
    assert took < 0.05 + 0.05
    assert outcome == "admitted"  # local: the fresh in-process breaker admits
    assert not breaker._link.up
    admin.close()


def test_the_closed_success_path_sends_nothing_per_call(
    make_registry: MakeRegistry, private_redis: PrivateRedis
) -> None:
    """2000 successes cost a handful of batched commands, not one per call."""
    breaker = _shared(make_registry, url=private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    time.sleep(0.1)
    before = int(admin.info("stats")["total_commands_processed"])
    for _ in range(2000):
        breaker.acquire().record(Verdict.SUCCESS, duration=0.001)
    time.sleep(0.1)  # the last batch flushed
    sent = int(admin.info("stats")["total_commands_processed"]) - before - 1  # minus the INFO
    assert sent < 20
    admin.close()


def test_a_missing_redis_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py installed, resilient() refuses a policy with [shared], naming the extra."""
    monkeypatch.setitem(__import__("sys").modules, "redis", None)
    policy = Policy(shared=SharedPolicy(url="redis://127.0.0.1:6379/9", namespace="x"))
    with pytest.raises(ConfigError, match=r"resilient-openai\[redis\]"):
        resilient(openai.OpenAI(api_key="sk-test"), policy)


def test_an_unset_url_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """url_env names a variable that is not set: ConfigError naming it, never a connection attempt."""
    monkeypatch.delenv("RO_TEST_NO_SUCH_URL", raising=False)
    policy = Policy(shared=SharedPolicy(url_env="RO_TEST_NO_SUCH_URL"), retry=RetryPolicy(rules={}))
    with pytest.raises(ConfigError, match="RO_TEST_NO_SUCH_URL"):
        resilient(openai.OpenAI(api_key="sk-test"), policy)


def test_calls_through_the_chain_never_see_redis_fail(private_redis: PrivateRedis) -> None:
    """Redis killed under a resilient client: every call is still answered, none waits on Redis."""
    upstream = FakeUpstream()
    upstream.set_default("m", Ok("fine"))
    shared = SharedPolicy(url=private_redis.url, namespace="chain")
    client = _client(upstream, Policy(retry=RetryPolicy(rules={}), shared=shared))

    def answer() -> str | None:
        return client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content

    assert answer() == "fine"
    private_redis.stop()
    for _ in range(10):
        start = time.monotonic()
        assert answer() == "fine"
        assert time.monotonic() - start < 0.1
    link = breakers(client).link
    assert link is not None
    link.close()


@pytest.mark.parametrize(
    ("first", "answer"),
    [("read-through", Ok("fine")), ("cache-step", Status(503))],
    ids=["cache-then-breaker", "breaker-then-cache"],
)
def test_a_first_call_waits_on_a_paused_redis_one_timeout_in_all(
    harness: Harness,
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
    first: str,
    answer: Ok | Status,
) -> None:
    """A new target's breaker read and a shared cache read share one ``timeout``, in either order.

    Redis itself is slow here, so the wait is measured in real time; the chain runs on the fake
    clock."""
    monkeypatch.setenv("RO_TEST_CACHE_SECRET", "s" * 32)
    fallback = {} if first == "read-through" else {"routes": {"gpt-A": {"steps": [{"kind": "cache"}]}}}
    policy = Policy.from_dict(
        {
            "retry": {"rules": {}},
            "cache": {"read_through": first == "read-through"},
            "fallback": fallback,
            "shared": {
                "url": private_redis.url, "namespace": "first", "timeout": 0.2,
                "key_secret_env": "RO_TEST_CACHE_SECRET",
            },
        }
    )  # fmt: skip
    client = harness.client(policy)
    harness.upstream.set_default("*", Ok("warm"))
    harness.chat(client, model="gpt-W")  # the client's own first call: not what is measured
    harness.upstream.set_default("gpt-A", answer)
    admin = redis.Redis.from_url(private_redis.url)
    admin.client_pause(400)  # longer than the call may take (0.28 s), short enough to wait out
    admin.close()
    start = time.monotonic()
    try:
        harness.chat(client)
    except openai.InternalServerError:
        assert isinstance(answer, Status)  # nothing cached: the 503 is the answer
    took = time.monotonic() - start
    harness.run(client.close)
    assert 0.2 <= took < 0.2 + 0.08


def test_a_probe_ask_and_a_cache_read_wait_one_timeout_in_all(
    harness: Harness, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The break is over, so the call asks Redis for a probe slot; then its cache step reads the
    shared cache. With Redis paused the two wait one ``timeout`` in all, not one each."""
    monkeypatch.setenv("RO_TEST_CACHE_SECRET", "s" * 32)
    policy = Policy.from_dict(
        {
            "retry": {"rules": {}},
            "breaker": {"fail_max": 1, "break_duration": 0.1, "break_max": 1.0},
            "fallback": {"routes": {"gpt-A": {"steps": [{"kind": "cache"}]}}},
            "shared": {
                "url": private_redis.url, "namespace": "probe-cache", "timeout": 0.2,
                "key_secret_env": "RO_TEST_CACHE_SECRET",
            },
        }
    )  # fmt: skip
    client = harness.client(policy)
    harness.upstream.set_default("gpt-A", Status(503))
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)  # the trip
    wait_for(lambda: [b.state for b in breakers(client)] == ["open"])
    time.sleep(0.15)  # Redis's own clock ends the break
    harness.clock.advance(0.2)  # and this worker's view of it
    admin = redis.Redis.from_url(private_redis.url)
    admin.client_pause(400)
    admin.close()
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)  # the probe (admitted locally once the ask timed out), then the cache
    took = time.monotonic() - start
    harness.run(client.close)
    assert 0.2 <= took < 0.2 + 0.08


def test_redis_killed_while_open_keeps_the_circuit_open_locally(private_redis: PrivateRedis) -> None:
    """Losing Redis mid-outage: each worker's local breaker starts from the shared view (open for
    the rest of the break), so the failing upstream is not asked fail_max times again."""
    upstream, policy = _outage(private_redis, "killed-open", fail_max=3)
    tripping, other = _client(upstream, policy), _client(upstream, policy)
    _trip(tripping, 3)
    with pytest.raises(CircuitOpenError):  # the other worker's first call reads the open circuit
        other.chat.completions.create(model="m", messages=MESSAGES)
    private_redis.stop()
    for worker in (tripping, other):
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as refused:
                worker.chat.completions.create(model="m", messages=MESSAGES)
            assert refused.value.retry_after is not None
            assert 3.0 < refused.value.retry_after <= 5.0
    assert upstream.count() == 3
    tripping.close()
    other.close()


def test_closing_the_link_under_waiting_first_calls_answers_them(private_redis: PrivateRedis) -> None:
    """Calls waiting on a paused Redis when the link closes: each is answered by the upstream; no
    redis-py error, closed-socket ValueError or cancelled read reaches a caller."""
    upstream = FakeUpstream()
    upstream.set_default("*", Ok("fine"))
    shared = SharedPolicy(url=private_redis.url, namespace="closing", timeout=1.0)
    client = _client(upstream, Policy(retry=RetryPolicy(rules={}), shared=shared))
    link = breakers(client).link
    assert link is not None
    redis.Redis.from_url(private_redis.url).client_pause(1500)
    waiting = threading.Barrier(5)
    answers: dict[int, object] = {}

    def call(index: int) -> None:
        waiting.wait()
        try:  # a model of its own: each call is a first call, reading its breaker from Redis
            reply = client.chat.completions.create(model=f"m{index}", messages=MESSAGES)
            answers[index] = reply.choices[0].message.content
        except Exception as exc:
            answers[index] = exc

    threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    waiting.wait()
    time.sleep(0.1)  # the calls are waiting on Redis now (it answers nothing for 1.5 s)
    link.close()
    for thread in threads:
        thread.join(timeout=5)
    assert answers == dict.fromkeys(range(4), "fine")


def test_redis_lost_after_a_reopening_keeps_the_grown_break(
    make_registry: MakeRegistry, private_redis: PrivateRedis
) -> None:
    """The local breaker taking over from a circuit that already reopened keeps its growth, so
    its next break is as long as the fleet's would have been."""
    breaker = _shared(make_registry, url=private_redis.url, timeout=1.0)
    for _ in range(3):
        _fail(breaker)
    wait_for(lambda: breaker.state == "open")
    probe = probe_after_break(breaker)  # the 0.2 s break is over: one probe is admitted
    probe.record(Verdict.SERVER_ERROR, duration=0.01)  # it fails: reopened, the break grown
    wait_for(lambda: breaker.snapshot().reopen_count == 1)
    private_redis.stop()
    wait_for(lambda: not breaker._link.up)
    snapshot = breaker.snapshot()  # the local breaker's, now
    assert (snapshot.state, snapshot.reopen_count) == ("open", 1)


def test_a_probes_outcome_never_waits_on_redis(
    make_registry: MakeRegistry, private_redis: PrivateRedis
) -> None:
    """Reporting a probe hands its outcome to the flusher: with Redis paused, the probe's caller
    returns at once instead of waiting up to ``timeout``."""
    breaker = _shared(make_registry, url=private_redis.url, timeout=0.5)
    for _ in range(3):
        _fail(breaker)
    wait_for(lambda: breaker.state == "open")
    probe = probe_after_break(breaker)
    redis.Redis.from_url(private_redis.url).client_pause(400)
    start = time.monotonic()
    probe.record(Verdict.SUCCESS, duration=0.01)
    assert time.monotonic() - start < 0.05
    wait_for(lambda: breaker.state == "closed")  # sent once Redis answers again


async def test_an_asyncio_probe_admission_never_blocks_the_loop(private_redis: PrivateRedis) -> None:
    """The call that asks Redis for a probe slot does so off the event loop: with Redis paused,
    other tasks keep running while it waits."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(fail_max=2, break_duration=0.1, break_max=1.0),
        shared=SharedPolicy(url=private_redis.url, namespace="loop", timeout=0.3),
    )
    client = _async_client(upstream, policy)
    await _opened_and_over(client, 2)  # the next call asks Redis for a probe slot
    redis.Redis.from_url(private_redis.url).client_pause(250)
    answer, ticks, _ = await _ticking(client.chat.completions.create(model="m", messages=MESSAGES))
    assert isinstance(answer, (openai.InternalServerError, CircuitOpenError))
    assert ticks >= 10  # the loop ran on through the ~0.25 s wait
    await client.close()


async def test_an_asyncio_first_read_never_blocks_the_loop(private_redis: PrivateRedis) -> None:
    """A new target's first read of the shared state is made off the event loop: with Redis
    paused, other tasks keep running while the call waits for it (at most ``timeout``)."""
    upstream = FakeUpstream()
    upstream.set_default("*", Ok("fine"))
    shared = SharedPolicy(url=private_redis.url, namespace="first-loop", timeout=0.6)
    client = _async_client(upstream, Policy(retry=RetryPolicy(rules={}), shared=shared))
    await client.chat.completions.create(model="warm", messages=MESSAGES)  # the link is up
    redis.Redis.from_url(private_redis.url).client_pause(250)
    reply, ticks, took = await _ticking(client.chat.completions.create(model="new", messages=MESSAGES))
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.content == "fine"
    assert 0.2 <= took < 0.6  # it waited for the read (Redis answers after the 0.25 s pause)
    assert ticks >= 10  # and the loop ran on meanwhile
    await client.close()


async def test_an_asyncio_first_call_reads_an_open_circuit(private_redis: PrivateRedis) -> None:
    """Another worker tripped the circuit: this worker's first asyncio call is refused from the
    shared state it reads first, and never reaches the failing upstream."""
    upstream, policy = _outage(private_redis, "first-open", fail_max=2)
    tripping = _client(upstream, policy)
    _trip(tripping, 2)
    other = _async_client(upstream, policy)
    with pytest.raises(CircuitOpenError) as refused:
        await other.chat.completions.create(model="m", messages=MESSAGES)
    assert refused.value.retry_after is not None
    assert upstream.count() == 2
    tripping.close()
    await other.close()


async def test_a_cancelled_asyncio_probe_admission_gives_the_slot_back(private_redis: PrivateRedis) -> None:
    """Cancelled while Redis is asked for the only probe slot: once the slot is granted, it is
    given back at once, so the next call probes instead of waiting out the probe's lease."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(fail_max=2, break_duration=0.1, break_max=1.0, probe_lease=30.0),
        shared=SharedPolicy(url=private_redis.url, namespace="cancelled", timeout=1.0),
    )
    client = _async_client(upstream, policy)
    await _opened_and_over(client, 2)  # the next call asks Redis for the probe slot
    redis.Redis.from_url(private_redis.url).client_pause(200)
    asking = asyncio.create_task(client.chat.completions.create(model="m", messages=MESSAGES))
    await asyncio.sleep(0.05)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    sent = upstream.count()
    await asyncio.sleep(0.3)  # Redis answers: the slot is granted, then given back
    with pytest.raises(openai.InternalServerError):  # a probe, not a refusal
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert upstream.count() == sent + 1
    await client.close()
