"""Fixtures for shared breakers: registries on the real Redis (``redis_url``, ``namespace``: the
top conftest), private Redis servers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from resilient_openai import CircuitOpenError
from resilient_openai._breaker import BreakerRegistry, Permit, SharedCircuitBreaker
from resilient_openai._breaker._redis import RedisLink, connect
from resilient_openai._clock import SystemClock
from resilient_openai._policy import BreakerPolicy, SharedPolicy
from resilient_openai.observe.events import Event, EventBus

#: Builds a registry of shared breakers: ``make(url=..., events=..., **shared_fields)``.
MakeRegistry = Callable[..., BreakerRegistry]


def wait_for(predicate: Callable[[], bool], within: float = 3.0) -> float:
    """Poll ``predicate`` every millisecond until it holds; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < within, "condition never became true"
        time.sleep(0.001)
    return time.monotonic() - start


def probe_after_break(breaker: SharedCircuitBreaker) -> Permit:
    """The permit ``breaker`` admits once its break is over (waited for): the probe."""
    permits: list[Permit] = []

    def admitted() -> bool:
        try:
            permits.append(breaker.acquire())
        except CircuitOpenError:
            return False
        return True

    wait_for(admitted)
    return permits[0]


@pytest.fixture
def make_registry(namespace: str, redis_url: str) -> Iterator[MakeRegistry]:
    """Registries as separate workers would have them (each its own link); closed afterwards."""
    links: list[RedisLink] = []

    def make(
        policy: BreakerPolicy | None = None,
        *,
        url: str | None = None,
        events: list[Event] | None = None,
        **shared: Any,
    ) -> BreakerRegistry:
        # A loaded test machine must not read as a slow Redis: tests of slowness pass their own.
        shared.setdefault("timeout", 1.0)
        link = connect(SharedPolicy(url=url or redis_url, namespace=namespace, **shared))
        links.append(link)
        bus = EventBus([events.append] if events is not None else [])
        return BreakerRegistry(policy or BreakerPolicy(), clock=SystemClock(), bus=bus, link=link)

    yield make
    for link in links:
        link.close()


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, stopped and restarted by its pid."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            self._process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A started private Redis (skipped when ``redis-server`` is not on PATH); stopped afterwards."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: the Redis fault tests need a private server")
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
