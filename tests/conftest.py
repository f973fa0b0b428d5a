"""Shared fixtures: a fake clock, the fault-injecting upstream, and a harness that drives the
same scenario through the sync and the async client shells."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest
import redis

from resilient_openai import Policy, resilient
from resilient_openai.testing import FakeClock, FakeUpstream

API_KEY = "sk-test-0123456789abcdefTESTKEY"
BASE_URL = "http://fake.test/v1"
#: The Redis the tests of shared state use, each in a namespace of its own.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The shared test Redis (``REDIS_URL``), or the test is skipped when it does not answer."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the chain sleeps or a test advances it."""
    return FakeClock()


@pytest.fixture
def upstream(clock: FakeClock) -> FakeUpstream:
    """The fake OpenAI upstream, on the same fake clock."""
    return FakeUpstream(clock=clock)


@dataclass
class Harness:
    """Runs one scenario through either shell: ``flavour`` is ``"sync"`` or ``"async"``."""

    flavour: str
    upstream: FakeUpstream
    clock: FakeClock

    @property
    def is_async(self) -> bool:
        return self.flavour == "async"

    def raw(self, *, api_key: str = API_KEY, base_url: str = BASE_URL) -> Any:
        """A plain SDK client on the fake upstream (SDK retries on, as users have it)."""
        if self.is_async:
            return openai.AsyncOpenAI(
                api_key=api_key, base_url=base_url,
                http_client=httpx2.AsyncClient(transport=self.upstream.async_transport()),
            )  # fmt: skip
        return openai.OpenAI(
            api_key=api_key, base_url=base_url, http_client=httpx2.Client(transport=self.upstream.transport())
        )

    def client(
        self, policy: Policy | None = None, *, runtime: Mapping[str, Any] | None = None, **raw: Any
    ) -> Any:
        """A resilient client on the fake upstream and the fake clock.

        ``runtime`` adds keyword arguments of ``resilient()`` (listeners, clients, functions...).
        """
        return resilient(self.raw(**raw), policy, **{"clock": self.clock, **(runtime or {})})

    def run(self, work: Callable[[], Any]) -> Any:
        """Call ``work()``; for the async flavour it returns a coroutine, which is run to the end."""
        result = work()
        if self.is_async:
            return asyncio.run(result)
        return result

    def chat(self, client: Any, **kwargs: Any) -> Any:
        """``client.chat.completions.create(...)`` with a default model and prompt."""
        kwargs.setdefault("model", "gpt-A")
        kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
        return self.run(lambda: client.chat.completions.create(**kwargs))

    def stream_chat(self, client: Any, **kwargs: Any) -> tuple[Any, list[Any], BaseException | None]:
        """Open a chat stream and read it to the end: (stream, chunks read, error raised if any)."""
        kwargs.setdefault("model", "gpt-A")
        kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
        chunks: list[Any] = []

        if self.is_async:

            async def consume() -> tuple[Any, BaseException | None]:
                stream = await client.chat.completions.create(stream=True, **kwargs)
                try:
                    async for chunk in stream:
                        chunks.append(chunk)
                except Exception as exc:
                    return stream, exc
                return stream, None

            stream, error = asyncio.run(consume())
            return stream, chunks, error
        stream = client.chat.completions.create(stream=True, **kwargs)
        try:
            for chunk in stream:
                chunks.append(chunk)
        except Exception as exc:
            return stream, chunks, exc
        return stream, chunks, None


@pytest.fixture(params=["sync", "async"])
def harness(request: pytest.FixtureRequest, upstream: FakeUpstream, clock: FakeClock) -> Harness:
    """The same scenario through the sync and the async shell."""
    return Harness(request.param, upstream, clock)


def text_of(chunks: list[Any]) -> str:
    """The content text a list of chat chunks carries."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
