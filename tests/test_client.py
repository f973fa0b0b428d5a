"""The resilient client end to end: the real SDK, the chain, and the fault-injecting upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from resilient_openai import (
    IncompleteStreamError,
    Policy,
    RetryPolicy,
    RetryRule,
    Timeouts,
    Verdict,
    provenance,
    resilient,
)
from resilient_openai.testing import Cut, FakeClock, FakeUpstream, Hold, Malformed, Ok, Silence, Stall, Status

from .conftest import Harness, text_of


def test_returns_the_same_client_class(harness: Harness) -> None:
    """The wrapped client is an instance of the SDK's class, and the original is unchanged."""
    raw = harness.raw()
    client = resilient(raw)
    assert isinstance(client, type(raw))
    assert client.max_retries == 0
    assert raw.max_retries == 2
    assert client.with_options(max_retries=5).max_retries == 0


def test_success_returns_sdk_type_with_provenance(harness: Harness) -> None:
    """A healthy call returns the SDK's ChatCompletion and says it came from upstream."""
    client = harness.client()
    result = harness.chat(client)
    assert isinstance(result, openai.types.chat.ChatCompletion)
    record = provenance(result)
    assert record is not None
    assert record.source == "upstream"
    assert [a.verdict for a in record.attempts] == ["success"]
    assert harness.upstream.count() == 1


def test_429_retry_after_is_honoured(harness: Harness) -> None:
    """429 with Retry-After: 2 then 200: two attempts, 2 s apart on the fake clock."""
    harness.upstream.script("gpt-A", [Status(429, headers={"retry-after": "2"}), Ok()])
    client = harness.client()
    result = harness.chat(client)
    assert harness.upstream.count() == 2
    assert harness.clock.sleeps == [2.0]
    record = provenance(result)
    assert record is not None
    assert [a.verdict for a in record.attempts] == ["rate_limited", "success"]
    assert record.retried


def test_retry_after_ms_wins_over_retry_after(harness: Harness) -> None:
    """retry-after-ms is read before Retry-After, as the SDK does."""
    headers = {"retry-after-ms": "250", "retry-after": "9"}
    harness.upstream.script("gpt-A", [Status(503, headers=headers), Ok()])
    harness.chat(harness.client())
    assert harness.clock.sleeps == [0.25]


def test_quota_exhausted_is_never_retried(harness: Harness) -> None:
    """429 insufficient_quota: one attempt, no sleep, the SDK's RateLimitError with the verdict."""
    harness.upstream.set_default(
        "gpt-A", Status(429, code_str="insufficient_quota", type="insufficient_quota")
    )
    client = harness.client()
    with pytest.raises(openai.RateLimitError) as caught:
        harness.chat(client)
    assert harness.upstream.count() == 1
    assert harness.clock.sleeps == []
    record = provenance(caught.value)
    assert record is not None
    assert record.reason == "quota_exhausted"


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, openai.BadRequestError), (401, openai.AuthenticationError), (404, openai.NotFoundError)],
)
def test_caller_errors_surface_untouched(harness: Harness, status: int, error: type[Exception]) -> None:
    """400 / 401 / 404: one attempt, and the SDK's own exception reaches the caller."""
    harness.upstream.set_default("gpt-A", Status(status))
    with pytest.raises(error):
        harness.chat(harness.client())
    assert harness.upstream.count() == 1
    assert harness.clock.sleeps == []


def test_500_once_then_success(harness: Harness) -> None:
    """500 then 200: two attempts on the same target."""
    harness.upstream.script("gpt-A", [Status(500), Ok()])
    result = harness.chat(harness.client())
    record = provenance(result)
    assert record is not None
    assert [(a.target, a.verdict) for a in record.attempts] == [
        (record.target, "server_error"),
        (record.target, "success"),
    ]


def test_persistent_503_is_bounded_by_the_rule(harness: Harness) -> None:
    """Persistent 503: exactly the rule's attempts, then the SDK's InternalServerError."""
    harness.upstream.set_default("gpt-A", Status(503))
    rules = {**RetryPolicy().rules, Verdict.SERVER_ERROR: RetryRule(attempts=4, base=0.5, cap=8, jitter=0)}
    policy = Policy(retry=RetryPolicy(rules=rules))
    with pytest.raises(openai.InternalServerError):
        harness.chat(harness.client(policy))
    assert harness.upstream.count() == 4
    assert harness.clock.sleeps == [0.5, 1.0, 2.0]


def test_should_retry_false_stops_at_once(harness: Harness) -> None:
    """x-should-retry: false on a 503 is obeyed."""
    harness.upstream.set_default("gpt-A", Status(503, headers={"x-should-retry": "false"}))
    with pytest.raises(openai.InternalServerError):
        harness.chat(harness.client())
    assert harness.upstream.count() == 1


def test_retry_after_beyond_cap_gives_up_now(harness: Harness) -> None:
    """A server wait over 120 s means give up now (so a fallback can answer), not sleep."""
    harness.upstream.set_default("gpt-A", Status(503, headers={"retry-after": "600"}))
    with pytest.raises(openai.InternalServerError):
        harness.chat(harness.client())
    assert harness.upstream.count() == 1
    assert harness.clock.sleeps == []


def test_silent_upstream_ends_within_the_deadline(harness: Harness) -> None:
    """A silent upstream: the call ends within the total deadline, not attempts x timeout."""
    harness.upstream.set_default("gpt-A", Silence())
    policy = Policy(timeouts=Timeouts(total=25.0, attempt=10.0, first_token=10.0, stream_idle=10.0))
    start = harness.clock.now()
    with pytest.raises(openai.APITimeoutError):
        harness.chat(harness.client(policy))
    assert harness.clock.now() - start <= 25.0
    assert harness.upstream.count() >= 2


def test_stream_cut_raises_typed_error_with_partial_text(harness: Harness) -> None:
    """A stream cut after 40 of 60 tokens raises IncompleteStreamError carrying the 40 tokens."""
    harness.upstream.set_default("gpt-A", Cut(40, tokens=60))
    client = harness.client()
    stream, chunks, error = harness.stream_chat(client)
    assert isinstance(error, IncompleteStreamError)
    delivered = text_of(chunks)
    assert error.partial_text == delivered
    assert len(delivered.split()) == 40
    assert error.reason == "cut"
    assert provenance(stream) is not None


def test_stream_failure_before_first_chunk_is_retried(harness: Harness) -> None:
    """A stream cut before its first event is retried invisibly."""
    harness.upstream.script("gpt-A", [Cut(0, tokens=10), Ok(tokens=10)])
    _, chunks, error = harness.stream_chat(harness.client())
    assert error is None
    assert len(text_of(chunks).split()) == 10
    assert harness.upstream.count() == 2


def test_stream_stall_after_delivery_is_typed(harness: Harness) -> None:
    """A stall longer than the idle limit mid-stream ends it with reason 'stalled'."""
    harness.upstream.set_default("gpt-A", Stall(5, 60.0, tokens=20))
    policy = Policy(timeouts=Timeouts(stream_idle=10.0))
    _, chunks, error = harness.stream_chat(harness.client(policy))
    assert isinstance(error, IncompleteStreamError)
    assert error.reason == "stalled"
    assert len(text_of(chunks).split()) == 5


def test_malformed_event_is_skipped(harness: Harness) -> None:
    """One malformed event in a healthy stream is dropped and the rest is read."""
    harness.upstream.set_default("gpt-A", Malformed(4, tokens=12))
    _, chunks, error = harness.stream_chat(harness.client())
    assert error is None
    assert len(text_of(chunks).split()) == 11


def test_stream_without_done_finishes_with_usage(harness: Harness) -> None:
    """No [DONE] but a clean end: the stream finishes, with usage when the server sent it."""
    harness.upstream.set_default("gpt-A", Ok(tokens=8, done=False))
    _, chunks, error = harness.stream_chat(harness.client(), stream_options={"include_usage": True})
    assert error is None
    assert len(text_of(chunks).split()) == 8
    assert chunks[-1].usage is not None


def test_cancellation_propagates_and_is_not_retried(upstream: object, clock: object) -> None:
    """Cancelling the task raises CancelledError and no second attempt is made."""
    import threading

    assert isinstance(upstream, FakeUpstream)
    gate = threading.Event()
    upstream.set_default("gpt-A", Hold(gate))
    assert isinstance(clock, FakeClock)
    harness = Harness("async", upstream, clock)
    client = harness.client()

    async def scenario() -> None:
        task = asyncio.create_task(
            client.chat.completions.create(model="gpt-A", messages=[{"role": "user", "content": "hi"}])
        )
        for _ in range(5000):
            if upstream.count():
                break
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
    assert upstream.count() == 1


def test_raw_response_goes_through_the_chain(harness: Harness) -> None:
    """with_raw_response is retried too and returns the SDK's raw wrapper."""
    harness.upstream.script("gpt-A", [Status(500), Ok()])
    client = harness.client()
    raw = harness.run(
        lambda: client.with_raw_response.chat.completions.create(
            model="gpt-A", messages=[{"role": "user", "content": "hi"}]
        )
    )
    assert raw.http_response.status_code == 200
    assert harness.upstream.count() == 2
    record = provenance(raw)
    assert record is not None
    assert record.source == "upstream"


def test_embeddings_and_responses_go_through_the_chain(harness: Harness) -> None:
    """Other resource methods are retried by the same chain."""
    harness.upstream.script("text-embedding-3-small", [Status(502), Ok()])
    harness.upstream.script("gpt-R", [Status(503), Ok(text="hi there")])
    client = harness.client()
    emb = harness.run(lambda: client.embeddings.create(model="text-embedding-3-small", input=["a", "b"]))
    assert len(emb.data) == 2
    resp = harness.run(lambda: client.responses.create(model="gpt-R", input="hello"))
    assert resp.output_text == "hi there"
    assert harness.upstream.count() == 4


def test_streaming_response_wrapper_goes_through_the_chain(harness: Harness) -> None:
    """with_streaming_response is retried too and its body parses to the SDK's type."""
    harness.upstream.script("gpt-A", [Status(503), Ok(text="streamed body")])
    client = harness.client()
    kwargs: Any = {"model": "gpt-A", "messages": [{"role": "user", "content": "hi"}]}
    if harness.is_async:

        async def read() -> Any:
            async with client.with_streaming_response.chat.completions.create(**kwargs) as response:
                return await response.parse()

        parsed = harness.run(read)
    else:
        with client.with_streaming_response.chat.completions.create(**kwargs) as response:
            parsed = response.parse()
    assert parsed.choices[0].message.content == "streamed body"
    assert harness.upstream.count() == 2


def test_async_client_type_and_copies_share_the_chain(upstream: FakeUpstream, clock: FakeClock) -> None:
    """A with_options copy keeps the chain: its calls are retried by the same breakers."""
    harness = Harness("async", upstream, clock)
    client = harness.client()
    assert isinstance(client, openai.AsyncOpenAI)
    copy = client.with_options(timeout=5.0)
    upstream.script("gpt-A", [Status(500), Ok()])
    result = harness.chat(copy)
    assert provenance(result) is not None
    assert upstream.count() == 2
