"""The answer cache shared through Redis, against a real Redis: sharing between clients and
processes, tenants kept apart, size, JSON and TTL bounds, and Redis down, killed, slow or restarted.

The shared Redis (``REDIS_URL``, default ``redis://127.0.0.1:6379/0``) gets a namespace per test,
deleted afterwards; the fault tests start a private ``redis-server`` on a free port and stop it by
its pid.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis

from resilient_openai import (
    CachePolicy,
    ConfigError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    SharedPolicy,
    health,
    provenance,
    resilient,
)
from resilient_openai._fallback.cache import CachedAnswer
from resilient_openai._fallback.shared_cache import RECHECK, SharedCache, settings_from
from resilient_openai.testing import FakeClock, FakeUpstream, Ok, Status

from ..conftest import API_KEY, BASE_URL, Harness

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET_ENV = "RESILIENT_TEST_CACHE_SECRET"
URL_ENV = "RESILIENT_TEST_REDIS_URL"
PROMPT = "what is the capital of France"
#: How long a test waits for the writer thread or a reconnection before failing.
PATIENCE = RECHECK * 3


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis answers at {REDIS_URL} (set REDIS_URL or start redis-server)")
    return client


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    """A direct connection to the shared test Redis."""
    client = _redis_or_skip()
    yield client
    client.close()


@pytest.fixture
def namespace(store: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A namespace of this test's own, the key secret and URL in the environment; keys deleted after."""
    name = f"test-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_ENV, "s" * 32)
    monkeypatch.setenv(URL_ENV, REDIS_URL)
    yield name
    for key in store.scan_iter(f"{name}:*"):
        store.delete(key)


def _policy(namespace: str, *, ttl: float = 60.0, max_bytes: int = 1 << 20, timeout: float = 1.0) -> Policy:
    """gpt-A falls back to the cache alone; no retries and no breaking: each call asks the upstream.

    ``timeout`` is long unless a test is about a slow Redis: on a busy machine a healthy Redis
    read may take a while, and one that times out is neither a hit nor a miss."""
    return Policy.from_dict(
        {
            "retry": {"rules": {}},
            "breaker": {"enabled": False},  # the cache alone: no breaker, shared or not
            "cache": {"ttl": ttl, "max_bytes": max_bytes},
            "fallback": {"routes": {"gpt-A": {"steps": [{"kind": "cache"}]}}},
            "shared": {
                "url_env": URL_ENV, "namespace": namespace, "timeout": timeout, "key_secret_env": SECRET_ENV,
            },
        }
    )  # fmt: skip


def _until(condition: Callable[[], bool], limit: float = PATIENCE) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _shared(client: Any) -> dict[str, Any]:
    shared: dict[str, Any] = health(client)["cache"]["shared"]
    return shared


def _stored(client: Any, count: int = 1) -> bool:
    return _until(lambda: _shared(client)["stored"] >= count)


def _source(answer: Any) -> str | None:
    record = provenance(answer)
    assert record is not None
    return record.source


def test_two_clients_share_an_answer_through_redis(harness: Harness, namespace: str) -> None:
    """An answer one client stored is served by another (its own local cache empty) in an outage."""
    policy = _policy(namespace)
    first, second = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    assert _source(harness.chat(first, messages=[{"role": "user", "content": PROMPT}])) == "upstream"
    assert _stored(first)
    harness.upstream.set_default("gpt-A", Status(503))
    answer = harness.chat(second, messages=[{"role": "user", "content": PROMPT}])
    assert (_source(answer), answer.choices[0].message.content) == ("cache", "Paris")
    assert _shared(second)["hits"] == 1
    assert health(second)["cache"]["entries"] == 1  # kept locally too


def test_read_through_serves_another_clients_answer_without_asking(harness: Harness, namespace: str) -> None:
    """With ``read_through``, a second client answers from Redis before asking the upstream."""
    policy = _policy(namespace).model_copy(update={"cache": CachePolicy(read_through=True)})
    first, second = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(first)
    assert _stored(first)
    answer = harness.chat(second)
    assert (_source(answer), answer.choices[0].message.content) == ("cache", "Paris")
    assert harness.upstream.count(model="gpt-A") == 1


def test_different_tenants_never_share(harness: Harness, namespace: str) -> None:
    """A client with another API key misses what the first stored: the key scopes the entry."""
    policy = _policy(namespace)
    first, other = harness.client(policy), harness.client(policy, api_key="sk-another-tenant-0123456789")
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(first)
    assert _stored(first)
    harness.upstream.set_default("gpt-A", Status(503))
    with pytest.raises(openai.InternalServerError):
        harness.chat(other)
    assert _shared(other)["misses"] == 1


def test_keys_and_values_hold_no_secret_and_keys_no_prompt(
    harness: Harness, namespace: str, store: redis.Redis
) -> None:
    """Keys are ``<namespace>:cache:<sha256>``; no key holds the prompt, no value the API key; values
    are JSON."""
    client = harness.client(_policy(namespace))
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(client, messages=[{"role": "user", "content": PROMPT}])
    assert _stored(client)
    keys = [key.decode() for key in store.scan_iter(f"{namespace}:*")]
    assert len(keys) == 1
    assert re.fullmatch(rf"{namespace}:cache:[0-9a-f]{{64}}", keys[0])
    value = store.get(keys[0])
    assert isinstance(value, bytes)
    assert API_KEY.encode() not in value
    assert value.startswith(b'{"operation":"chat.completions"')


def test_an_answer_over_the_size_bound_is_not_shared(
    harness: Harness, namespace: str, store: redis.Redis
) -> None:
    """An answer larger than ``cache.max_bytes`` is refused, by Redis as by the local cache."""
    client = harness.client(_policy(namespace, max_bytes=200))
    harness.upstream.set_default("gpt-A", Ok(text="word " * 100))
    harness.chat(client)
    assert _shared(client)["refused"] == 1
    assert list(store.scan_iter(f"{namespace}:*")) == []


#: What another writer (or a damaged value) may leave under a key this library stored an answer.
FOREIGN = {
    "not a whole answer": {"operation": "chat.completions", "model": "m", "stored_at": 1, "body": {"x": 1}},
    "choices not a list": {
        "operation": "chat.completions", "model": "m", "stored_at": 1,
        "body": {"id": "c", "created": 1, "model": "m", "choices": "x"},
    },
    "another operation": {
        "operation": "responses", "model": "m", "stored_at": 1,
        "body": {"id": "r", "object": "response", "model": "m", "status": "completed", "output": []},
    },
    "over the size bound": {
        "operation": "chat.completions", "model": "m", "stored_at": 1,
        "body": {"id": "c", "created": 1, "model": "m", "choices": [], "pad": "x" * 4096},
    },
}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("foreign", list(FOREIGN))
def test_a_value_this_library_did_not_store_is_a_miss(
    harness: Harness, namespace: str, store: redis.Redis, foreign: str, stream: bool
) -> None:
    """Whatever else sits under an answer's key is no answer: the caller gets the upstream's
    error, never a shapeless ``ChatCompletion`` or a ``KeyError``, and it is not kept locally."""
    policy = _policy(namespace, max_bytes=2048)
    first = harness.client(policy)
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(first)
    assert _stored(first)
    (key,) = store.scan_iter(f"{namespace}:cache:*")
    store.set(key, json.dumps(FOREIGN[foreign]), px=60_000)
    harness.upstream.set_default("gpt-A", Status(503))
    second = harness.client(policy)
    ask = harness.stream_chat if stream else harness.chat
    with pytest.raises(openai.InternalServerError):
        ask(second)
    assert _shared(second)["misses"] == 1
    assert health(second)["cache"]["entries"] == 0


def test_an_answer_that_is_not_strict_json_is_refused(namespace: str, store: redis.Redis) -> None:
    """A body that is not a strict JSON object (``NaN``, not UTF-8, a list, nested past the parser's
    depth, not JSON at all) never reaches Redis, and the writer goes on."""
    settings, problems = settings_from(_policy(namespace), os.environ)
    assert settings is not None, problems
    cache = SharedCache(settings)
    bodies = (b'{"x": NaN}', b'{"x": "\xff"}', b"[1]", b"[" * 100_000, b"not json")
    for body in bodies:
        cache.put(uuid.uuid4().hex, CachedAnswer("chat.completions", "m", body, 0.0))
    assert _until(lambda: cache.stats().refused == len(bodies))
    assert list(store.scan_iter(f"{namespace}:*")) == []
    cache.put("fine", CachedAnswer("chat.completions", "m", '{"x":"é \\ud800"}'.encode(), 0.0))
    assert _until(lambda: cache.stats().stored == 1)


def test_a_shared_answer_expires_after_the_ttl(harness: Harness, namespace: str, store: redis.Redis) -> None:
    """Redis drops an entry ``cache.ttl`` seconds after it was stored."""
    policy = _policy(namespace, ttl=0.3)
    first, second = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(first)
    assert _stored(first)
    (key,) = store.scan_iter(f"{namespace}:*")
    assert 0 < store.pttl(key) <= 300
    assert _until(lambda: store.exists(key) == 0, limit=1.0)
    harness.upstream.set_default("gpt-A", Status(503))
    with pytest.raises(openai.InternalServerError):
        harness.chat(second)


def test_missing_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset URL variable, or a secret unset or too short, fails at ``resilient()``, naming
    the variable and never a value."""
    policy = _policy("ns")
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ConfigError) as caught:
        resilient(openai.OpenAI(api_key=API_KEY, base_url=BASE_URL), policy)
    message = str(caught.value)
    assert f"shared.url_env: the variable {URL_ENV!r} is not set" in message
    assert f"shared.key_secret_env: the variable {SECRET_ENV!r} must hold a secret of at least 16" in message
    assert "short" not in message.replace("shared", "")


def test_a_url_that_is_not_a_redis_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL variable holding no usable Redis URL fails at ``resilient()``, its value not shown."""
    monkeypatch.setenv(URL_ENV, "redis://user:hunter2@host:notaport/0")
    monkeypatch.setenv(SECRET_ENV, "s" * 32)
    with pytest.raises(
        ConfigError, match=f"shared.url_env: the variable {URL_ENV!r} must be a redis"
    ) as caught:
        resilient(openai.OpenAI(api_key=API_KEY, base_url=BASE_URL), _policy("ns"))
    assert "hunter2" not in str(caught.value)
    assert "notaport" not in str(caught.value)


def test_without_the_redis_extra_a_shared_cache_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With redis-py not importable, ``[shared]`` says which extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setenv(SECRET_ENV, "s" * 32)
    monkeypatch.setenv(URL_ENV, REDIS_URL)
    with pytest.raises(ConfigError, match=r"resilient-openai\[redis\]"):
        resilient(openai.OpenAI(api_key=API_KEY, base_url=BASE_URL), _policy("ns"))


def test_without_a_key_secret_the_cache_stays_local(harness: Harness) -> None:
    """``[shared]`` without ``key_secret_env`` shares nothing: ``health`` shows no shared level."""
    policy = Policy(
        fallback=FallbackPolicy(routes={"gpt-A": Route(steps=(FallbackStep(kind="cache"),))}),
        cache=CachePolicy(),
        retry=RetryPolicy(rules={}),
        shared=SharedPolicy(url=REDIS_URL),
    )
    assert health(harness.client(policy))["cache"]["shared"] is None


# -- Redis faults: a private redis-server ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of this test's own on ``port``, no persistence; stopped by its pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--enable-debug-command", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.2, socket_connect_timeout=0.2)
        assert _until(lambda: _answers(client), limit=5.0), "the private redis-server did not start"
        client.close()

    def sleep(self, seconds: float) -> threading.Thread:
        """Put the server to sleep for ``seconds`` (``DEBUG SLEEP``), from a thread; it is asleep
        when this returns."""
        client = redis.Redis.from_url(self.url)

        def sleep() -> None:
            client.execute_command("DEBUG", "SLEEP", str(seconds))  # type: ignore[no-untyped-call]
            client.close()

        sleeping = threading.Thread(target=sleep)
        sleeping.start()
        time.sleep(0.05)
        return sleeping

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """A private Redis (not started yet); the URL and secret are in the environment."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the Redis fault tests need their own server")
    server = PrivateRedis(_free_port())
    monkeypatch.setenv(URL_ENV, server.url)
    monkeypatch.setenv(SECRET_ENV, "s" * 32)
    yield server
    if server.process is not None:
        server.kill()


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = work()
    return result, time.monotonic() - started


def _missed(harness: Harness, client: Any) -> float:
    """How long a call took that nothing could answer (the upstream's 503 is the answer)."""
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        harness.chat(client)
    return time.monotonic() - started


def test_redis_down_at_start_up_then_back(harness: Harness, private: PrivateRedis) -> None:
    """With no Redis at start-up the local cache answers, no call waits on Redis past ``timeout``;
    once Redis answers, the client is back on it within ``RECHECK``."""
    client = harness.client(_policy("down", timeout=0.1))
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(client)
    assert _until(lambda: _shared(client)["state"] == "down")
    harness.upstream.set_default("gpt-A", Status(503))
    answer, took = _timed(lambda: harness.chat(client))
    assert (_source(answer), took < 0.1 + 0.05) == ("cache", True)
    assert _shared(client)["dropped"] == 1
    private.start()
    assert _until(lambda: _shared(client)["state"] == "up")
    harness.upstream.set_default("gpt-A", Ok(text="Lyon"))
    harness.chat(client, messages=[{"role": "user", "content": "and now?"}])
    assert _stored(client)


def test_redis_killed_mid_run_and_restarted_empty(harness: Harness, private: PrivateRedis) -> None:
    """Killed: local answers go on, a shared read is a quick miss, no redis-py error reaches the
    caller. Restarted empty: the client reconnects and stores again."""
    private.start()
    policy = _policy("killed", timeout=0.1)
    first, second = harness.client(policy), harness.client(policy)
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(first)
    assert _stored(first)
    private.kill()
    harness.upstream.set_default("gpt-A", Status(503))
    assert _source(harness.chat(first)) == "cache"  # its local copy
    with pytest.raises(openai.InternalServerError):
        harness.chat(second)
    assert _shared(second)["state"] == "down"
    assert _missed(harness, second) < 0.05  # down: Redis is not asked at all
    private.start()
    assert _until(lambda: _shared(second)["state"] == "up")
    harness.upstream.set_default("gpt-A", Ok(text="Lyon"))
    harness.chat(second, messages=[{"role": "user", "content": "and now?"}])
    assert _stored(second)


def test_a_slow_redis_costs_a_call_at_most_the_timeout(harness: Harness, private: PrivateRedis) -> None:
    """A Redis that does not answer in ``timeout`` is a miss after ``timeout``, then marked down."""
    private.start()
    client = harness.client(_policy("slow", timeout=0.1))
    sleeping = private.sleep(0.35)
    harness.upstream.set_default("gpt-A", Status(503))
    took = _missed(harness, client)
    assert _shared(client)["state"] == "down"  # until a ping after the server wakes
    sleeping.join()
    assert 0.1 <= took < 0.1 + 0.1
    assert _until(lambda: _shared(client)["state"] == "up")


def test_an_asyncio_read_of_a_slow_redis_never_blocks_the_loop(
    upstream: FakeUpstream, clock: FakeClock, private: PrivateRedis
) -> None:
    """While an asyncio call waits on a sleeping Redis, the loop's other tasks keep running."""
    private.start()
    client = Harness("async", upstream, clock).client(_policy("loop", timeout=0.2))
    upstream.set_default("gpt-A", Status(503))
    sleeping = private.sleep(0.5)
    gaps: list[float] = []

    async def tick() -> None:
        for _ in range(15):
            started = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - started)

    async def both() -> tuple[Any, BaseException | None]:
        call = client.chat.completions.create(model="gpt-A", messages=[{"role": "user", "content": PROMPT}])
        return await asyncio.gather(call, tick(), return_exceptions=True)

    outcome, _ = asyncio.run(both())
    assert _shared(client)["state"] == "down"  # the read ran late: it did wait on Redis
    sleeping.join()
    assert isinstance(outcome, openai.InternalServerError)
    assert max(gaps) < 0.1


# -- two worker processes ------------------------------------------------------------------------


def _client_on(fault: Ok | Status, policy: Policy) -> openai.OpenAI:
    """A resilient client on an upstream of its own that always answers with ``fault``."""
    upstream = FakeUpstream()
    upstream.set_default("gpt-A", fault)
    http = httpx2.Client(transport=upstream.transport())
    return resilient(openai.OpenAI(api_key=API_KEY, base_url=BASE_URL, http_client=http), policy)


def _worker(client: openai.OpenAI | None, policy: Policy, results: Any) -> None:
    """One worker process: asks once with ``client`` (or, if None, a client it makes on a failing
    upstream), waits for what it stored to reach Redis, and reports what answered."""
    client = client or _client_on(Status(503), policy)
    answer = client.chat.completions.create(model="gpt-A", messages=[{"role": "user", "content": PROMPT}])
    source = _source(answer)
    if source == "upstream":
        assert _stored(client)
    results.put((source, answer.choices[0].message.content, _shared(client)["stored"]))


def test_a_worker_serves_what_another_worker_stored(namespace: str) -> None:
    """Worker 1 (its client made before the fork, as with a preloading server) answers from the
    upstream and shares the answer; worker 2, in an outage, serves it from Redis."""
    policy = _policy(namespace)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    for client in (_client_on(Ok(text="Paris"), policy), None):
        worker = context.Process(target=_worker, args=(client, policy, results))
        worker.start()
        worker.join(timeout=10)
        assert worker.exitcode == 0
    assert results.get(timeout=1) == ("upstream", "Paris", 1)
    assert results.get(timeout=1) == ("cache", "Paris", 0)


def test_a_closed_shared_cache_stays_closed(harness: Harness, namespace: str) -> None:
    """close() stops the cache's writer before closing its connections: it cannot ping Redis back
    up afterwards (which would reopen a connection and report the closed cache as up)."""

    def writers() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name == "resilient-cache-w"}

    before = writers()
    client = harness.client(_policy(namespace))
    harness.upstream.set_default("gpt-A", Ok(text="Paris"))
    harness.chat(client, messages=[{"role": "user", "content": PROMPT}])
    (writer,) = writers() - before
    harness.run(client.close)
    assert not writer.is_alive()
    assert _shared(client)["state"] == "down"


def test_collecting_a_forgotten_shared_cache_does_not_wait(harness: Harness, namespace: str) -> None:
    """A client dropped without close(): the garbage collector's finalizer only flags the writer
    (which closes the connection itself within RECHECK), so whichever thread collects it, a
    caller's, never waits on the writer."""

    def collecting() -> float:
        start = time.monotonic()
        gc.collect()
        return time.monotonic() - start

    # The long run's heap is set aside, so a collection here scans little more than the client.
    gc.freeze()
    try:
        client = harness.client(_policy(namespace))
        harness.upstream.set_default("gpt-A", Ok(text="Paris"))
        cache = weakref.ref(type(client)._resilience.shared_cache)
        heap = collecting()  # what a collection costs here anyway
        harness.chat(client, messages=[{"role": "user", "content": PROMPT}])
        assert _stored(client)  # the writer has just begun its next wait of up to RECHECK
        del client
        took = collecting()
    finally:
        gc.unfreeze()
    assert cache() is None  # collected: its finalizer ran in this thread
    assert took < heap + RECHECK / 2
