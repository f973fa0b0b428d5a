"""Static checks of the public API's types: mypy reads this file, pytest never collects or runs it.

Each ``assert_type`` pins what a user's type checker sees. A change that widens a type to ``Any``
or changes a return type breaks ``mypy``, not a test run. The functions are never called.
"""

from __future__ import annotations

from typing import Any, assert_type

import openai
import pybreaker
from openai import AsyncStream, Stream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from resilient_openai import (
    SYSTEM_CLOCK,
    CircuitOpenError,
    Classification,
    Clock,
    ConfigError,
    IncompleteStreamError,
    Policy,
    Provenance,
    RedisBreakerStorage,
    RequestRejectedError,
    ResilienceError,
    SharedPolicy,
    Source,
    UnanswerableError,
    Verdict,
    classify,
    health,
    provenance,
    resilient,
)
from resilient_openai.testing import FakeClock, FakeUpstream, Fault, RecordedRequest, Status

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _sync_client_types() -> None:
    """``resilient()`` keeps the sync client's class, so every SDK call keeps its type."""
    client = resilient(openai.OpenAI(api_key="sk-typing"))
    assert_type(client, openai.OpenAI)
    assert_type(resilient(openai.OpenAI(api_key="sk-typing"), Policy()), openai.OpenAI)
    assert_type(resilient(openai.OpenAI(api_key="sk-typing"), {"retry": {}}), openai.OpenAI)
    assert_type(resilient(openai.OpenAI(api_key="sk-typing"), "policy.toml"), openai.OpenAI)

    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert_type(completion, ChatCompletion)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert_type(stream, Stream[ChatCompletionChunk])
    assert_type(client.responses.create(model="gpt-4o-mini", input="hi"), Response)
    assert_type(client.with_options(timeout=5.0), openai.OpenAI)

    assert_type(provenance(completion), Provenance | None)
    assert_type(provenance(stream), Provenance | None)


async def _async_client_types() -> None:
    """``resilient()`` keeps the async client's class, so every awaited SDK call keeps its type."""
    client = resilient(openai.AsyncOpenAI(api_key="sk-typing"))
    assert_type(client, openai.AsyncOpenAI)
    assert_type(resilient(openai.AsyncOpenAI(api_key="sk-typing"), Policy()), openai.AsyncOpenAI)

    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert_type(completion, ChatCompletion)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert_type(stream, AsyncStream[ChatCompletionChunk])
    assert_type(await client.responses.create(model="gpt-4o-mini", input="hi"), Response)

    assert_type(provenance(completion), Provenance | None)


def _provenance_types(record: Provenance) -> None:
    """The fields of a provenance record, as a user reads them."""
    assert_type(record.source, Source | None)
    assert_type(record.model, str | None)
    assert_type(record.requested_model, str | None)
    assert_type(record.reason, str | None)
    assert_type(record.retried, bool)
    assert_type(provenance(object()), Provenance | None)


def _error_types(
    open_error: CircuitOpenError,
    stream_error: IncompleteStreamError,
    rejected: RequestRejectedError,
    unanswerable: UnanswerableError,
) -> None:
    """Our errors are ``openai.OpenAIError`` and carry typed context."""
    assert_type(open_error.retry_after, float | None)
    assert_type(open_error.breaker, str | None)
    assert_type(open_error.attempts, int)
    assert_type(open_error.operation, str | None)
    assert_type(open_error.model, str | None)
    assert_type(stream_error.partial_text, str)
    assert_type(stream_error.chunks, int)
    assert_type(stream_error.reason, str)
    assert_type(rejected.rule, str)
    assert_type(unanswerable.reason, str)
    base: openai.OpenAIError = open_error
    ours: ResilienceError = stream_error
    value_error: ValueError = ConfigError(["retry.attempts: must be >= 1"])
    del base, ours, value_error


def _helper_types() -> None:
    """Module-level helpers and the testing kit."""
    assert_type(classify(RuntimeError()), Classification)
    assert_type(classify(RuntimeError()).verdict, Verdict)
    assert_type(classify(RuntimeError()).retry_after, float | None)
    clock: Clock = SYSTEM_CLOCK
    fake: Clock = FakeClock()
    del clock, fake
    assert_type(health(resilient(openai.OpenAI(api_key="sk-typing"))), dict[str, Any])
    upstream = FakeUpstream(clock=FakeClock())
    assert_type(upstream.requests, list[RecordedRequest])
    assert_type(upstream.count(model="gpt-4o-mini"), int)
    fault: Fault = Status(503)
    assert_type(upstream.requests[0].fault, Fault | None)
    del fault
    storage = RedisBreakerStorage.connect("payments", SharedPolicy(url_env="REDIS_URL"))
    assert_type(storage, RedisBreakerStorage)
    plain: pybreaker.CircuitBreakerStorage = storage
    del plain
