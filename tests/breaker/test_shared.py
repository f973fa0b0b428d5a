"""Shared breakers against the real Redis: one state for every worker (here: several links)."""

from __future__ import annotations

import gc
import math
import threading
import time

import httpx2
import openai
import pybreaker
import pytest
from openai.types.chat import ChatCompletionMessageParam

from resilient_openai import (
    BreakerPolicy,
    CircuitOpenError,
    Policy,
    RedisBreakerStorage,
    RetryPolicy,
    breakers,
    health,
    resilient,
)
from resilient_openai._breaker import BreakerRegistry, Permit, SharedCircuitBreaker
from resilient_openai._breaker._redis import Reply, connect
from resilient_openai._breaker._shared import Admission, View, admission, view_of
from resilient_openai._classify import Verdict
from resilient_openai._clock import SystemClock
from resilient_openai._policy import SharedPolicy
from resilient_openai.observe.events import BreakerStateChanged, Event, EventBus
from resilient_openai.testing import FakeUpstream, Ok, Status

from .conftest import MakeRegistry, probe_after_break, wait_for

FAST = BreakerPolicy(fail_max=3, break_duration=0.2, break_max=1.0)


def _fail(breaker: SharedCircuitBreaker) -> None:
    breaker.acquire().record(Verdict.SERVER_ERROR, duration=0.01)


def _probes(breaker: SharedCircuitBreaker) -> bool:
    """Whether ``breaker`` admits a probe now (refused: False)."""
    try:
        return breaker.acquire().is_probe
    except CircuitOpenError:
        return False


def _shared(make: MakeRegistry, policy: BreakerPolicy = FAST, **kw: object) -> SharedCircuitBreaker:
    breaker = make(policy, **kw).get("target")
    assert isinstance(breaker, SharedCircuitBreaker)
    return breaker


# -- the pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "now", "expected"),
    [
        (View("closed", 3, 0.0), 10.0, Admission.ADMIT),
        (View("open", 3, 11.0), 10.0, Admission.REFUSE),
        (View("open", 3, 9.0), 10.0, Admission.ASK),
        (View("half-open", 3, 10.5), 10.0, Admission.REFUSE),
        (View("half-open", 3, 10.0), 10.0, Admission.ASK),
        (View("isolated", 3, math.inf), 10.0, Admission.REFUSE),
    ],
)
def test_admission_table(view: View, now: float, expected: Admission) -> None:
    """Closed admits, a refusal holds until its time, then Redis is asked."""
    assert admission(view, now) is expected


def test_a_half_open_refusal_is_held_at_most_the_refresh_interval() -> None:
    """Every slot taken for a long lease: this worker asks again within 0.5 s, not 60 s."""
    view = view_of(Reply("half-open", 4, 60.0, 0, 1, None, False, "", "", 1), 100.0)
    assert view.until == 100.5
    assert view_of(Reply("isolated", 4, -1.0, 0, 0, None, False, "", "", 1), 100.0).until == math.inf


# -- one cluster-wide state ---------------------------------------------------------------------


def test_failures_from_two_workers_count_together(make_registry: MakeRegistry) -> None:
    """fail_max 3: two failures in one worker and one in another open the circuit for both."""
    a, b = _shared(make_registry), _shared(make_registry)
    _fail(a)
    _fail(b)
    _fail(a)
    wait_for(lambda: a.state == "open" and b.state == "open")


def test_a_trip_reaches_the_other_worker_within_100_ms(make_registry: MakeRegistry) -> None:
    """Pushed over pub/sub: the other worker refuses well within 100 ms of the trip."""
    a, b = _shared(make_registry), _shared(make_registry)
    wait_for(lambda: b._link.up)
    time.sleep(0.05)  # the listener has subscribed
    for _ in range(3):
        _fail(a)
    assert wait_for(lambda: b.state == "open") < 0.1
    with pytest.raises(CircuitOpenError) as refused:
        b.acquire()
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 0.21  # Redis answers in whole milliseconds


def test_a_success_in_between_resets_the_count(make_registry: MakeRegistry) -> None:
    """Failures in a row across the fleet: a success from any worker starts the count again."""
    a, b = _shared(make_registry), _shared(make_registry)
    _fail(a)
    _fail(a)
    b.acquire().record(Verdict.SUCCESS, duration=0.01)
    time.sleep(0.1)  # b's flusher sent its success (batched: at most 50 ms)
    _fail(a)
    time.sleep(0.1)
    assert a.state == "closed"
    reply = a._link.run(a.name, a.policy, "read")
    assert reply is not None
    assert reply.failures == 1


def test_exactly_n_probes_cluster_wide(make_registry: MakeRegistry) -> None:
    """half_open_probes 2, three workers, 30 threads after the break: exactly two probes."""
    policy = BreakerPolicy(fail_max=1, break_duration=0.1, half_open_probes=2)
    workers = [_shared(make_registry, policy) for _ in range(3)]
    _fail(workers[0])
    wait_for(lambda: all(w.state == "open" for w in workers))
    time.sleep(0.12)
    barrier = threading.Barrier(30)
    probes: list[object] = []
    refused: list[object] = []

    def call(worker: SharedCircuitBreaker) -> None:
        barrier.wait()
        try:
            probes.append(worker.acquire())
        except CircuitOpenError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=call, args=(workers[i % 3],)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(probes) == 2
    assert len(refused) == 28


def test_a_probe_success_closes_the_circuit_everywhere(make_registry: MakeRegistry) -> None:
    """Recovery: one worker's probe succeeds, every worker is closed again within 100 ms."""
    a, b = _shared(make_registry), _shared(make_registry)
    for _ in range(3):
        _fail(a)
    wait_for(lambda: b.state == "open")
    time.sleep(0.21)
    probe = b.acquire()
    assert probe.is_probe
    probe.record(Verdict.SUCCESS, duration=0.01)
    assert wait_for(lambda: a.state == "closed") < 0.1
    a.acquire().record(Verdict.SUCCESS, duration=0.01)


def test_a_failed_probe_reopens_with_a_longer_break(make_registry: MakeRegistry) -> None:
    """The break grows cluster-wide: 0.2 s, then 0.4 s after a failed probe, with sub-second opened_at."""
    a, b = _shared(make_registry), _shared(make_registry)
    for _ in range(3):
        _fail(a)
    wait_for(lambda: a.state == "open")
    first = a._link.run(a.name, a.policy, "read")
    assert first is not None
    assert first.opened_at is not None
    assert first.opened_at != int(first.opened_at)  # microseconds, not whole seconds
    time.sleep(0.21)
    probe = b.acquire()
    probe.record(Verdict.SERVER_ERROR, duration=0.01)  # sent by b's flusher, at once

    def reopened() -> bool:
        reply = a._link.run(a.name, a.policy, "read")
        return reply is not None and reply.reopens == 1

    wait_for(reopened, within=0.1)
    again = a._link.run(a.name, a.policy, "read")
    assert again is not None
    assert again.state == "open"
    assert again.reopens == 1
    assert 0.3 < again.wait <= 0.4


def test_a_dead_workers_probe_frees_its_slot_when_its_lease_ends(make_registry: MakeRegistry) -> None:
    """A probe that never reports holds the only slot for probe_lease, then another worker probes."""
    policy = BreakerPolicy(fail_max=1, break_duration=0.1, probe_lease=0.2)
    a, b = _shared(make_registry, policy), _shared(make_registry, policy)
    _fail(a)
    time.sleep(0.11)
    lost = a.acquire()  # its worker "dies": never reported
    assert lost.is_probe
    with pytest.raises(CircuitOpenError):
        b.acquire()
    time.sleep(0.21)
    assert b.acquire().is_probe


def _probe_out(a: SharedCircuitBreaker, b: SharedCircuitBreaker) -> Permit:
    """Open the circuit (fail_max 1) from ``a``, wait out its break there, and take the only
    probe slot; ``b`` has seen it taken (refused: held locally until a push or a refresh)."""
    _fail(a)
    wait_for(lambda: a.state == "open" and b.state == "open")
    probe = probe_after_break(a)
    assert probe.is_probe
    assert not _probes(b)
    return probe


def test_an_ignored_probe_frees_its_slot_at_once(make_registry: MakeRegistry) -> None:
    """A cancelled probe counts as nothing and gives its slot back to the cluster."""
    policy = BreakerPolicy(fail_max=1, break_duration=0.1)
    a, b = _shared(make_registry, policy), _shared(make_registry, policy)
    _probe_out(a, b).ignore()
    assert wait_for(lambda: _probes(b)) < 0.1  # pushed: not the 0.5 s refresh


def test_a_late_reply_never_overwrites_a_newer_one(make_registry: MakeRegistry) -> None:
    """Within one generation too: ``b`` is refused a probe while ``a`` frees the slot, and the
    push of the freed slot reaches ``b`` before its own (older) refusal does; ``b`` keeps the
    newer state and probes at once, not after the 0.5 s refresh."""
    policy = BreakerPolicy(fail_max=1, break_duration=0.1)
    a, b = _shared(make_registry, policy), _shared(make_registry, policy)
    probe = _probe_out(a, b)
    link = b._link
    refused = link.run(b.name, policy, "admit", link.lease(link.probe_id()))
    assert refused is not None
    assert not refused.admitted
    freed = a._link.run(a.name, policy, "settle", a._link.lease(probe._probe), f"{refused.gen}:I")
    assert freed is not None
    assert (freed.gen, freed.state) == (refused.gen, "half-open")
    b.adopt(freed)  # the push
    b.adopt(refused)  # the caller's reply, overtaken
    assert b.acquire().is_probe


def test_stale_outcomes_are_dropped(make_registry: MakeRegistry) -> None:
    """A failure from a call admitted before a reset does not count in the new generation."""
    a = _shared(make_registry)
    old = a.acquire()
    a.reset()
    old.record(Verdict.SERVER_ERROR, duration=0.01)
    time.sleep(0.1)
    reply = a._link.run(a.name, a.policy, "read")
    assert reply is not None
    assert reply.failures == 0


def test_isolate_close_and_reset_act_cluster_wide(make_registry: MakeRegistry) -> None:
    """An operator on one worker isolates, closes and resets the breaker of every worker."""
    events: list[Event] = []
    mine: list[Event] = []
    ra = make_registry(FAST, events=mine)
    rb = make_registry(FAST, events=events)
    ra.isolate("target")
    assert [(e.old, e.new) for e in mine if isinstance(e, BreakerStateChanged)] == [("closed", "isolated")]
    b = rb.get("target")
    wait_for(lambda: b.state == "isolated")
    with pytest.raises(CircuitOpenError) as refused:
        b.acquire()
    assert refused.value.retry_after is None
    ra.close("target")
    wait_for(lambda: b.state == "closed")
    changes = [e for e in events if isinstance(e, BreakerStateChanged)]
    assert changes[-1].old == "isolated"
    assert changes[-1].new == "closed"
    assert "worker" in changes[-1].reason
    assert str(ra.link.who if ra.link else "") in changes[-1].reason


def test_snapshot_shows_the_shared_state(make_registry: MakeRegistry) -> None:
    """health() material: another worker's trip, with its failures and opened_at."""
    a, b = _shared(make_registry), _shared(make_registry)
    for _ in range(3):
        _fail(a)
    wait_for(lambda: b.state == "open")
    wait_for(lambda: b.snapshot().opened_at is not None)
    snap = b.snapshot()
    assert snap.state == "open"
    assert snap.retry_after is not None


def test_a_forgotten_links_threads_end(namespace: str, redis_url: str) -> None:
    """No close(): once the registry (and its link) is collected, both background threads end."""
    registry = BreakerRegistry(
        BreakerPolicy(), clock=SystemClock(), bus=EventBus(),
        link=connect(SharedPolicy(url=redis_url, namespace=namespace)),
    )  # fmt: skip
    registry.get("target")
    assert registry.link is not None
    threads = list(registry.link._threads)
    del registry
    gc.collect()
    wait_for(lambda: not any(thread.is_alive() for thread in threads))


def test_ratio_mode_counts_every_workers_calls_in_one_window(make_registry: MakeRegistry) -> None:
    """min_calls 4, ratio 0.5: two successes in one worker and two failures in another trip it."""
    policy = BreakerPolicy(mode="ratio", min_calls=4, failure_ratio=0.5, window=10.0, break_duration=1.0)
    a, b = _shared(make_registry, policy), _shared(make_registry, policy)
    for _ in range(2):
        a.acquire().record(Verdict.SUCCESS, duration=0.01)
    time.sleep(0.1)  # a's batch is in
    _fail(b)
    time.sleep(0.1)
    assert a.state == b.state == "closed"  # 1 of 3 calls failed: under min_calls
    _fail(b)
    wait_for(lambda: a.state == "open" and b.state == "open")
    snap = a.snapshot()
    assert snap.state == "open"


def test_ratio_mode_forgets_calls_that_left_the_window(make_registry: MakeRegistry) -> None:
    """window 0.2 s: three failures, then one more after the window: only one call is counted.

    The window runs on Redis's own clock (the scripts read the server's time), which no fake
    clock moves: the test waits it out for real, briefly."""
    policy = BreakerPolicy(mode="ratio", min_calls=4, failure_ratio=0.5, window=0.2)
    a, b = _shared(make_registry, policy), _shared(make_registry, policy)
    for _ in range(3):
        _fail(a)
    time.sleep(0.3)
    _fail(b)
    time.sleep(0.1)
    assert b.state == "closed"


def test_a_plain_pybreaker_shares_the_state(make_registry: MakeRegistry) -> None:
    """pybreaker.CircuitBreaker over RedisBreakerStorage trips our shared breakers, and back."""
    ours = _shared(make_registry)
    link = ours._link
    storages = [RedisBreakerStorage(link, "target", FAST) for _ in range(2)]
    plain = [pybreaker.CircuitBreaker(fail_max=3, reset_timeout=0.2, state_storage=s) for s in storages]

    def boom() -> None:
        raise RuntimeError("upstream down")

    for breaker in (plain[0], plain[1]):
        with pytest.raises(RuntimeError):
            breaker.call(boom)
    with pytest.raises((RuntimeError, pybreaker.CircuitBreakerError)):
        plain[0].call(boom)
    assert storages[1].state == "open"
    assert storages[1].counter == 3
    opened = storages[1].opened_at
    assert opened is not None
    assert opened.microsecond != 0 or opened.timestamp() != int(opened.timestamp())
    wait_for(lambda: ours.state == "open")
    with pytest.raises(pybreaker.CircuitBreakerError):
        plain[1].call(lambda: None)


def test_plain_pybreakers_in_two_processes_share_one_circuit(redis_url: str, namespace: str) -> None:
    """The public RedisBreakerStorage.connect: two plain pybreakers, as two workers would have
    them, trip one circuit together and refuse together."""
    shared = SharedPolicy(url=redis_url, namespace=namespace)
    threads = threading.active_count()
    storages = [RedisBreakerStorage.connect("payments", shared) for _ in range(2)]
    assert threading.active_count() == threads  # round trips in the caller's thread, no threads
    plain = [pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, state_storage=s) for s in storages]

    def boom() -> None:
        raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError):
        plain[0].call(boom)
    with pytest.raises((RuntimeError, pybreaker.CircuitBreakerError)):
        plain[1].call(boom)
    for breaker in plain:
        assert breaker.current_state == "open"
        with pytest.raises(pybreaker.CircuitBreakerError):
            breaker.call(lambda: None)
    for storage in storages:
        storage.close()


# -- through resilient() ------------------------------------------------------------------------


def test_two_clients_share_a_trip_health_and_operator_actions(redis_url: str, namespace: str) -> None:
    """Client A's failures open the circuit for client B: refused without a request; health says so."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(503))
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(fail_max=2, break_duration=5.0),
        shared=SharedPolicy(url=redis_url, namespace=namespace),
    )

    def client() -> openai.OpenAI:
        http = httpx2.Client(transport=upstream.transport())
        sdk = openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1", http_client=http)
        return resilient(sdk, policy)

    a, b = client(), client()
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            a.chat.completions.create(model="m", messages=messages)
    wait_for(lambda: health(a)["status"] == "degraded")
    with pytest.raises(CircuitOpenError):  # B's first call: its new breaker reads the shared state
        b.chat.completions.create(model="m", messages=messages)
    assert upstream.count() == 2
    assert health(b)["status"] == "degraded"
    key = next(iter(breakers(b))).name
    breakers(b).close(key)
    wait_for(lambda: health(a)["status"] == "ok")
    upstream.set_default("m", Ok("back"))
    assert a.chat.completions.create(model="m", messages=messages).choices[0].message.content == "back"
    for made in (a, b):
        link = breakers(made).link
        assert link is not None
        link.close()


async def test_an_asyncio_clients_failures_trip_a_sync_clients_breaker(
    redis_url: str, namespace: str
) -> None:
    """The asyncio shell shares the same state: its failures open the circuit for a sync client."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(503))
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(fail_max=2, break_duration=5.0),
        shared=SharedPolicy(url=redis_url, namespace=namespace),
    )
    http = httpx2.AsyncClient(transport=upstream.async_transport())
    a = resilient(
        openai.AsyncOpenAI(api_key="sk-test", base_url="http://fake.test/v1", http_client=http), policy
    )
    sync_http = httpx2.Client(transport=upstream.transport())
    b = resilient(
        openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1", http_client=sync_http), policy
    )
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await a.chat.completions.create(model="m", messages=messages)
    wait_for(lambda: health(a)["status"] == "degraded")
    with pytest.raises(CircuitOpenError):
        b.chat.completions.create(model="m", messages=messages)
    assert upstream.count() == 2
    for made in (a, b):
        link = breakers(made).link
        assert link is not None
        link.close()
