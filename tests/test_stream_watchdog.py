"""Stream limits over a real socket: a stall mid-answer ends at ``stream_idle`` in either shell.

The transport fixes a sync body's read limit when the body begins (long enough for the first
token); the watchdog ends a later read that outlives the idle limit. These run against the fake
upstream served on a loopback port, so the stalls are real (a fraction of a second).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from resilient_openai import IncompleteStreamError, Policy, provenance, resilient
from resilient_openai._chain._watchdog import WATCHDOG
from resilient_openai.testing import FakeUpstream, Ok, Stall

ANSWER = "one two three four five six seven eight"
MESSAGES: list[Any] = [{"role": "user", "content": "count"}]
#: Long to wait for a first token, short between tokens: only a watched read ends at the latter.
LIMITS = {"first_token": 3.0, "stream_idle": 0.15, "attempt": 5.0, "total": 10.0}
STALL = 0.6


@pytest.fixture
def served() -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream()
    with upstream.serve() as base_url:
        yield upstream, base_url


def _policy(**fallback: Any) -> Policy:
    return Policy.from_dict({"timeouts": LIMITS, "retry": {"rules": {}}, "fallback": fallback})


def _read(
    flavour: str, base_url: str, policy: Policy, pause: float = 0.0
) -> tuple[Any, str, Exception | None, float]:
    """Stream one answer through a resilient client of ``flavour``: the stream, the text read, the
    error that ended it (None: complete) and the seconds from asking to that end (building the
    client is not counted). ``pause``: the caller dawdles over the second word."""
    text: list[str] = []

    def take(chunk: Any) -> None:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
            if len(text) == 2:  # a word read after the first token: the idle limit applies
                time.sleep(pause)

    if flavour == "sync":
        client = resilient(openai.OpenAI(api_key="sk-test", base_url=base_url), policy)
        start = time.monotonic()
        stream = client.chat.completions.create(model="gpt-A", messages=MESSAGES, stream=True)
        try:
            for chunk in stream:
                take(chunk)
        except IncompleteStreamError as exc:
            return stream, "".join(text), exc, time.monotonic() - start
        finally:
            client.close()
        return stream, "".join(text), None, time.monotonic() - start

    async def run() -> tuple[Any, str, Exception | None, float]:
        client = resilient(openai.AsyncOpenAI(api_key="sk-test", base_url=base_url), policy)
        start = time.monotonic()
        stream = await client.chat.completions.create(model="gpt-A", messages=MESSAGES, stream=True)
        try:
            async for chunk in stream:
                take(chunk)
        except IncompleteStreamError as exc:
            return stream, "".join(text), exc, time.monotonic() - start
        finally:
            await client.close()
        return stream, "".join(text), None, time.monotonic() - start

    return asyncio.run(run())


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_stall_mid_answer_ends_at_the_idle_limit(served: tuple[FakeUpstream, str], flavour: str) -> None:
    """Three words, then a 0.6 s pause: the caller gets IncompleteStreamError('stalled') after the
    0.15 s idle limit, not after the 3 s first-token limit the body's reads began with."""
    upstream, base_url = served
    upstream.set_default("gpt-A", Stall(3, STALL, text=ANSWER))
    _, text, error, took = _read(flavour, base_url, _policy())
    assert isinstance(error, IncompleteStreamError)
    assert error.reason == "stalled"
    assert text.split() == ["one", "two", "three"]
    assert took < STALL * 0.8


def test_a_stalled_sync_stream_is_finished_by_the_next_step(served: tuple[FakeUpstream, str]) -> None:
    """The stall is a stall, not a cut: the backup model's answer is spliced in where the caller
    is, well before the stalled upstream would have gone on."""
    upstream, base_url = served
    upstream.set_default("gpt-A", Stall(3, STALL, text=ANSWER))
    upstream.set_default("gpt-B", Ok(text=ANSWER))
    policy = _policy(routes={"gpt-A": {"steps": [{"kind": "model", "model": "gpt-B"}]}})
    stream, text, error, took = _read("sync", base_url, policy)
    assert took < STALL * 0.8
    assert error is None
    assert text == ANSWER
    record = provenance(stream)
    assert record is not None
    assert (record.model, record.rescue) == ("gpt-B", "spliced")


def test_a_slow_reader_is_not_a_stalled_upstream(served: tuple[FakeUpstream, str]) -> None:
    """The caller takes 0.3 s over the second word (twice the idle limit) while the rest arrives
    in the socket: only time spent waiting on the upstream counts, so the answer is read whole."""
    upstream, base_url = served
    upstream.set_default("gpt-A", Stall(2, 0.25, text="one two three four"))  # the rest comes later
    _, text, error, _ = _read("sync", base_url, _policy(), pause=0.3)
    assert error is None
    assert text == "one two three four"


def test_the_client_goes_on_after_a_stall(served: tuple[FakeUpstream, str]) -> None:
    """The stalled connection is shut down and left out of the pool: the next call answers."""
    upstream, base_url = served
    upstream.script("gpt-A", [Stall(3, STALL, text=ANSWER), Ok(text=ANSWER)])
    client = resilient(openai.OpenAI(api_key="sk-test", base_url=base_url), _policy())
    with pytest.raises(IncompleteStreamError):
        for _ in client.chat.completions.create(model="gpt-A", messages=MESSAGES, stream=True):
            pass
    reply = client.chat.completions.create(model="gpt-A", messages=MESSAGES)
    assert reply.choices[0].message.content == ANSWER
    client.close()


def test_a_stream_dropped_unread_is_no_longer_watched(served: tuple[FakeUpstream, str]) -> None:
    """A caller that opens a stream and drops it without reading or closing it: once collected,
    the watchdog holds nothing of it (nor keeps waking for it)."""
    upstream, base_url = served
    upstream.set_default("gpt-A", Ok(text=ANSWER))
    client = resilient(openai.OpenAI(api_key="sk-test", base_url=base_url), _policy())
    before = len(WATCHDOG._watched)
    stream = client.chat.completions.create(model="gpt-A", messages=MESSAGES, stream=True)
    assert len(WATCHDOG._watched) == before + 1
    del stream
    gc.collect()
    assert len(WATCHDOG._watched) == before
    client.close()
