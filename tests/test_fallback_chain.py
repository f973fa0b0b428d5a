"""Fallbacks through the real SDK: other models, other clients, the cache, canned answers."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_openai import (
    BreakerPolicy,
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    Target,
    Verdict,
    health,
    provenance,
    resilient,
)
from resilient_openai.testing import Cut, FakeClock, FakeUpstream, Ok, Status

from .conftest import Harness, text_of

CANNED = "Sorry, {model} is unavailable ({reason})."


def _policy(harness: Harness, *steps: FallbackStep, **kwargs: Any) -> Policy:
    route = Route(steps=steps)
    kwargs.setdefault("retry", RetryPolicy(rules={}))
    kwargs.setdefault("breaker", BreakerPolicy(fail_max=1, break_duration=60))
    return Policy(fallback=FallbackPolicy(routes={"gpt-A": route}), **kwargs)


def _ask(harness: Harness, client: Any, prompt: str, **kwargs: Any) -> Any:
    return harness.chat(client, messages=[{"role": "user", "content": prompt}], **kwargs)


def test_open_breaker_answers_from_cache_then_canned(harness: Harness) -> None:
    """Breaker open on gpt-A: a cached prompt is served from the cache, another gets the canned text."""
    client = harness.client(
        _policy(harness, FallbackStep(kind="cache"), FallbackStep(kind="canned", text=CANNED))
    )
    first = _ask(harness, client, "P")
    harness.upstream.set_default("gpt-A", Status(503))
    opened = _ask(harness, client, "Q")  # fails, opens the breaker, canned
    assert provenance(opened) is not None
    assert provenance(opened).source == "canned"  # type: ignore[union-attr]
    before = harness.upstream.count()
    cached = _ask(harness, client, "P")
    assert harness.upstream.count() == before
    record = provenance(cached)
    assert record is not None
    assert record.source == "cache"
    assert record.reason == "circuit_open"
    assert cached.choices[0].message.content == first.choices[0].message.content
    canned = _ask(harness, client, "R")
    assert canned.choices[0].message.content == "Sorry, gpt-A is unavailable (circuit_open)."
    assert canned.model == "resilient-openai/canned"
    assert harness.upstream.count() == before


def test_fallback_model_answers_with_its_own_model_and_usage(harness: Harness) -> None:
    """Primary 503: the fallback model answers, and model and usage are the fallback's."""
    harness.upstream.set_default("gpt-A", Status(503))
    harness.upstream.set_default("gpt-B", Ok(text="from b", tokens=2))
    policy = _policy(harness, FallbackStep(kind="model", model="gpt-B"), retry=RetryPolicy())
    result = _ask(harness, harness.client(policy), "P")
    assert result.model == "gpt-B"
    assert result.choices[0].message.content == "from b"
    assert result.usage.completion_tokens == 2
    record = provenance(result)
    assert record is not None
    assert record.source == "fallback_model"
    assert record.model == "gpt-B"
    assert record.reason == "server_error"
    assert harness.upstream.count(model="gpt-A") == 1  # fail_max=1 opens the circuit at once


def test_primary_attempts_bounded_by_its_rule(harness: Harness) -> None:
    """With the breaker out of the way and nowhere else to go, the primary gets exactly its
    rule's attempts; with a next step it is not asked again: the route answers at once."""
    harness.upstream.set_default("gpt-A", Status(503))
    alone = Policy(retry=RetryPolicy(), breaker=BreakerPolicy(fail_max=50))
    with pytest.raises(openai.InternalServerError):
        _ask(harness, harness.client(alone), "P")
    assert harness.upstream.count(model="gpt-A") == 3
    policy = _policy(
        harness,
        FallbackStep(kind="model", model="gpt-B"),
        retry=RetryPolicy(),
        breaker=BreakerPolicy(fail_max=50),
    )
    result = _ask(harness, harness.client(policy), "P")
    assert harness.upstream.count(model="gpt-A") == 3 + 1
    assert result.model == "gpt-B"


def test_fallback_client_on_another_provider(harness: Harness) -> None:
    """A target with its own client answers when the primary is down."""
    other = FakeUpstream(clock=harness.clock)
    other.set_default("gpt-A", Ok(text="from azure"))
    target_client = Harness(harness.flavour, other, harness.clock).raw(
        api_key="sk-other-key", base_url="http://azure.test/v1"
    )
    harness.upstream.set_default("gpt-A", Status(503))
    fallback = FallbackPolicy(
        routes={"gpt-A": Route(steps=(FallbackStep(kind="target", target="azure"),))},
        targets={"azure": Target(name="azure")},
    )
    policy = Policy(retry=RetryPolicy(rules={}), fallback=fallback)
    result = _ask(harness, harness.client(policy, runtime={"clients": {"azure": target_client}}), "P")
    assert result.choices[0].message.content == "from azure"
    record = provenance(result)
    assert record is not None
    assert record.source == "fallback_client"
    assert other.count() == 1


def test_target_from_base_url_sends_through_the_http_client_factory(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target made from base_url and api_key_env answers through the client http_client(target) builds."""
    monkeypatch.setenv("RO_TEST_BACKUP_KEY", "sk-backup-key")
    other = FakeUpstream(clock=harness.clock)
    other.set_default("gpt-A", Ok(text="from backup"))
    built: list[str] = []

    def http_client(target: Target) -> Any:
        built.append(target.name)
        if harness.is_async:
            return httpx2.AsyncClient(transport=other.async_transport())
        return httpx2.Client(transport=other.transport())

    harness.upstream.set_default("gpt-A", Status(503))
    backup = Target(name="backup", base_url="http://backup.test/v1", api_key_env="RO_TEST_BACKUP_KEY")
    fallback = FallbackPolicy(
        routes={"gpt-A": Route(steps=(FallbackStep(kind="target", target="backup"),))},
        targets={"backup": backup},
    )
    policy = Policy(retry=RetryPolicy(rules={}), fallback=fallback)
    result = _ask(harness, harness.client(policy, runtime={"http_client": http_client}), "P")
    assert result.choices[0].message.content == "from backup"
    assert provenance(result).source == "fallback_client"  # type: ignore[union-attr]
    assert built == ["backup"]
    [sent] = other.requests
    assert sent.headers["authorization"] == "Bearer sk-backup-key"


def test_a_per_request_key_never_reaches_another_provider(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's own ``Authorization`` / org / project headers go to its provider only: the
    fallback provider is called with its own key, other per-request headers intact."""
    monkeypatch.setenv("RO_TEST_BACKUP_KEY", "sk-backup-key")
    other = FakeUpstream(clock=harness.clock)
    other.set_default("gpt-A", Ok(text="from backup"))

    def http_client(target: Target) -> Any:
        if harness.is_async:
            return httpx2.AsyncClient(transport=other.async_transport())
        return httpx2.Client(transport=other.transport())

    harness.upstream.set_default("gpt-A", Status(503))
    backup = Target(name="backup", base_url="http://backup.test/v1", api_key_env="RO_TEST_BACKUP_KEY")
    fallback = FallbackPolicy(
        routes={"gpt-A": Route(steps=(FallbackStep(kind="target", target="backup"),))},
        targets={"backup": backup},
    )
    client = harness.client(
        Policy(retry=RetryPolicy(rules={}), fallback=fallback), runtime={"http_client": http_client}
    )
    own = {"Authorization": "Bearer sk-caller-secret", "OpenAI-Organization": "org-caller", "X-Trace": "t1"}
    result = harness.chat(client, extra_headers=own)
    assert result.choices[0].message.content == "from backup"
    [primary] = harness.upstream.requests
    assert primary.headers["authorization"] == "Bearer sk-caller-secret"
    [sent] = other.requests
    assert sent.headers["authorization"] == "Bearer sk-backup-key"
    assert "openai-organization" not in sent.headers
    assert sent.headers["x-trace"] == "t1"


def test_the_callers_key_goes_on_to_its_own_provider_after_another_providers_step(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Route: another provider, then a model on the caller's own client. The provider never sees
    the caller's per-request key; the caller's own provider still gets it afterwards."""
    monkeypatch.setenv("RO_TEST_BACKUP_KEY", "sk-backup-key")
    other = FakeUpstream(clock=harness.clock)
    other.set_default("gpt-A", Status(503))

    def http_client(target: Target) -> Any:
        if harness.is_async:
            return httpx2.AsyncClient(transport=other.async_transport())
        return httpx2.Client(transport=other.transport())

    harness.upstream.set_default("gpt-A", Status(503))
    harness.upstream.set_default("gpt-B", Ok(text="from gpt-B"))
    steps = (FallbackStep(kind="target", target="backup"), FallbackStep(kind="model", model="gpt-B"))
    fallback = FallbackPolicy(
        routes={"gpt-A": Route(steps=steps)},
        targets={
            "backup": Target(
                name="backup", base_url="http://backup.test/v1", api_key_env="RO_TEST_BACKUP_KEY"
            )
        },
    )
    client = harness.client(
        Policy(retry=RetryPolicy(rules={}), fallback=fallback), runtime={"http_client": http_client}
    )
    result = harness.chat(client, extra_headers={"Authorization": "Bearer sk-caller-secret"})
    assert result.choices[0].message.content == "from gpt-B"
    assert [r.headers["authorization"] for r in other.requests] == ["Bearer sk-backup-key"]
    [sent_b] = [r for r in harness.upstream.requests if r.model == "gpt-B"]
    assert sent_b.headers["authorization"] == "Bearer sk-caller-secret"


def test_streaming_caller_gets_a_complete_fallback_stream(harness: Harness) -> None:
    """stream=True with the primary down: the caller reads a complete stream from the fallback."""
    harness.upstream.set_default("gpt-A", Status(503))
    harness.upstream.set_default("gpt-B", Ok(text="alpha beta gamma"))
    client = harness.client(_policy(harness, FallbackStep(kind="model", model="gpt-B")))
    stream, chunks, error = harness.stream_chat(client)
    assert error is None
    assert text_of(chunks) == "alpha beta gamma"
    assert provenance(stream).source == "fallback_model"  # type: ignore[union-attr]


def test_streaming_caller_gets_a_synthesized_canned_stream(harness: Harness) -> None:
    """A canned answer to a streaming caller arrives as the SDK's chunk type."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text="plain answer here")))
    stream, chunks, error = harness.stream_chat(client, stream_options={"include_usage": True})
    assert error is None
    assert isinstance(chunks[0], openai.types.chat.ChatCompletionChunk)
    assert text_of(chunks) == "plain answer here"
    assert provenance(stream).source == "canned"  # type: ignore[union-attr]


def test_cache_replays_a_streamed_answer_as_a_stream(harness: Harness) -> None:
    """A completed streamed answer is cached and replayed as a stream when the primary is down."""
    harness.upstream.set_default("gpt-A", Ok(text="one two three"))
    client = harness.client(_policy(harness, FallbackStep(kind="cache")))
    _, first, _ = harness.stream_chat(client)
    harness.upstream.set_default("gpt-A", Status(503))
    stream, replay, error = harness.stream_chat(client)
    assert error is None
    assert text_of(replay) == text_of(first) == "one two three"
    assert provenance(stream).source == "cache"  # type: ignore[union-attr]
    plain = _ask(harness, client, "hello")  # the same request, not streamed
    assert plain.choices[0].message.content == "one two three"


#: An answer as an upstream may send it: indented, with a field the SDK's model does not declare.
_AS_SENT = b"""{
  "id": "chatcmpl-1",
  "object": "chat.completion",
  "created": 1767225600,
  "model": "gpt-A",
  "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "as sent"}, "finish_reason": "stop"}
  ],
  "vendor_note": "kept"
}"""


def test_the_cache_keeps_an_answer_as_the_upstream_sent_it(harness: Harness) -> None:
    """A plain answer is stored as its bytes came (they are what counts against ``max_bytes``)
    and replayed with every field, the undeclared ones too."""
    answers = iter([httpx2.Response(200, headers={"content-type": "application/json"}, content=_AS_SENT)])

    def handler(request: httpx2.Request) -> httpx2.Response:
        return next(answers, httpx2.Response(503, json={"error": {"message": "down"}}))

    transport = httpx2.MockTransport(handler)
    http = httpx2.AsyncClient(transport=transport) if harness.is_async else httpx2.Client(transport=transport)
    make = openai.AsyncOpenAI if harness.is_async else openai.OpenAI
    raw = make(api_key="sk-x", base_url="http://mock.test/v1", http_client=http)  # type: ignore[arg-type]
    client = resilient(raw, _policy(harness, FallbackStep(kind="cache")), clock=harness.clock)
    first = harness.chat(client)
    assert health(client)["cache"]["bytes"] == len(_AS_SENT)
    cached = harness.chat(client)
    assert provenance(cached).source == "cache"  # type: ignore[union-attr]
    assert cached.choices[0].message.content == first.choices[0].message.content == "as sent"
    assert cached.vendor_note == "kept"


def test_errors_fallbacks_and_cut_streams_are_never_cached(harness: Harness) -> None:
    """Only complete upstream answers are stored: not errors, fallback answers or cut streams."""
    client = harness.client(
        _policy(
            harness,
            FallbackStep(kind="cache"),
            FallbackStep(kind="canned", text="canned"),
            breaker=BreakerPolicy(enabled=False),
        )
    )
    harness.upstream.set_default("gpt-A", Status(503))
    assert _ask(harness, client, "E").choices[0].message.content == "canned"  # error, then canned
    assert _ask(harness, client, "E").choices[0].message.content == "canned"  # canned was not cached
    harness.upstream.set_default("gpt-A", Cut(10, tokens=30))
    _, _, error = harness.stream_chat(client, messages=[{"role": "user", "content": "C"}])
    assert error is not None
    harness.upstream.set_default("gpt-A", Status(503))
    again = _ask(harness, client, "C")
    assert provenance(again).source == "canned"  # type: ignore[union-attr]


def test_caller_errors_do_not_fall_back(harness: Harness) -> None:
    """A 400 is the caller's mistake: it propagates, no fallback answers it."""
    harness.upstream.set_default("gpt-A", Status(400))
    client = harness.client(_policy(harness, FallbackStep(kind="canned", text="x")))
    with pytest.raises(openai.BadRequestError):
        _ask(harness, client, "P")


def test_context_length_goes_to_the_larger_model(harness: Harness) -> None:
    """context_length_exceeded goes to the route's larger-context model."""
    harness.upstream.set_default("gpt-A", Status(400, code_str="context_length_exceeded"))
    harness.upstream.set_default("gpt-A-long", Ok(text="long answer"))
    route = Route(steps=(FallbackStep(kind="canned", text="x"),), context_model="gpt-A-long")
    policy = Policy(fallback=FallbackPolicy(routes={"gpt-A": route}))
    result = _ask(harness, harness.client(policy), "P")
    assert result.model == "gpt-A-long"
    assert provenance(result).reason == "context_length_exceeded"  # type: ignore[union-attr]


def test_quota_moves_on_at_once(harness: Harness) -> None:
    """Quota exhaustion is not retried: the next target answers straight away."""
    harness.upstream.set_default("gpt-A", Status(429, code_str="insufficient_quota"))
    harness.upstream.set_default("gpt-B", Ok(text="b"))
    policy = _policy(harness, FallbackStep(kind="model", model="gpt-B"), retry=RetryPolicy())
    result = _ask(harness, harness.client(policy), "P")
    assert result.model == "gpt-B"
    assert harness.upstream.count(model="gpt-A") == 1
    assert harness.clock.sleeps == []


def test_forced_failure_exercises_the_fallback(harness: Harness) -> None:
    """The chaos switch fails the primary on purpose; nothing reaches the upstream for it."""
    fallback = FallbackPolicy(
        routes={"gpt-A": Route(steps=(FallbackStep(kind="canned", text="forced"),))},
        forced_failures={"gpt-A": Verdict.SERVER_ERROR},
    )
    client = harness.client(Policy(retry=RetryPolicy(rules={}), fallback=fallback))
    result = _ask(harness, client, "P")
    assert result.choices[0].message.content == "forced"
    assert harness.upstream.count() == 0


def test_function_fallback(harness: Harness) -> None:
    """A user function answers with text built from the request."""
    harness.upstream.set_default("gpt-A", Status(503))

    def answer(body: Any, reason: str) -> str:
        return f"{len(body['messages'])} message(s), {reason}"

    policy = _policy(harness, FallbackStep(kind="function", function="answer"))
    client = harness.client(policy, runtime={"functions": {"answer": answer}})
    result = _ask(harness, client, "P")
    assert result.choices[0].message.content == "1 message(s), server_error"
    assert provenance(result).source == "function"  # type: ignore[union-attr]


def test_no_fallback_left_raises_the_last_error(harness: Harness) -> None:
    """When every rung fails the caller gets the last real failure, with provenance."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(harness, FallbackStep(kind="cache")))
    with pytest.raises(openai.InternalServerError) as caught:
        _ask(harness, client, "never cached")
    with pytest.raises(CircuitOpenError):
        _ask(harness, client, "never cached")
    assert provenance(caught.value).reason == "server_error"  # type: ignore[union-attr]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(
        st.text("abcdefXYZ0123456789", min_size=8, max_size=24), min_size=2, max_size=2, unique=True
    )
)
def test_tenants_never_share_a_cache_entry(keys: list[str]) -> None:
    """Two API keys asking the same prompt never see each other's cached answer."""
    clock = FakeClock()
    upstream = FakeUpstream(clock=clock)
    upstream.set_default("gpt-A", Ok(text="tenant one's answer"))
    route = Route(steps=(FallbackStep(kind="cache"), FallbackStep(kind="canned", text="canned")))
    policy = Policy(retry=RetryPolicy(rules={}), fallback=FallbackPolicy(routes={"gpt-A": route}))
    raw = openai.OpenAI(api_key=f"sk-{keys[0]}", base_url="http://fake.test/v1",
                        http_client=httpx2.Client(transport=upstream.transport()))  # fmt: skip
    first = resilient(raw, policy, clock=clock)
    second = first.with_options(api_key=f"sk-{keys[1]}")
    messages: Any = [{"role": "user", "content": "P"}]
    first.chat.completions.create(model="gpt-A", messages=messages)
    upstream.set_default("gpt-A", Status(503))
    other = second.chat.completions.create(model="gpt-A", messages=messages)
    assert other.choices[0].message.content == "canned"
    mine = first.chat.completions.create(model="gpt-A", messages=messages)
    assert mine.choices[0].message.content == "tenant one's answer"


def _continuation_client(harness: Harness, other: FakeUpstream, *, accepts_prefill: bool) -> Any:
    backup = Harness(harness.flavour, other, harness.clock).raw(
        api_key="sk-b", base_url="http://backup.test/v1"
    )
    fallback = FallbackPolicy(
        routes={"gpt-A": Route(steps=(FallbackStep(kind="target", target="backup"),))},
        targets={"backup": Target(name="backup", accepts_prefill=accepts_prefill)},
        continuation=True,
    )
    policy = Policy(retry=RetryPolicy(rules={}), fallback=fallback)
    return harness.client(policy, runtime={"clients": {"backup": backup}})


def test_continuation_completes_a_cut_stream(harness: Harness) -> None:
    """Opt-in continuation: a stream cut mid-answer is finished by a prefill-accepting target."""
    other = FakeUpstream(clock=harness.clock)
    other.set_default("gpt-A", Ok(text=" seven eight"))
    harness.upstream.set_default("gpt-A", Cut(6, text="one two three four five six seven eight"))
    client = _continuation_client(harness, other, accepts_prefill=True)
    stream, chunks, error = harness.stream_chat(client)
    assert error is None
    assert text_of(chunks) == "one two three four five six seven eight"
    [sent] = other.requests
    assert sent.json is not None
    assert sent.json["messages"][-1] == {"role": "assistant", "content": "one two three four five six"}
    record = provenance(stream)
    assert record is not None
    assert record.source == "fallback_client"
    assert record.reason == "stream_interrupted"


def test_no_prefill_to_a_target_that_did_not_declare_it(harness: Harness) -> None:
    """Without accepts_prefill no prefill is sent: the target is asked the question again, and
    when its answer does not start with the delivered text the cut stream raises the typed error."""
    other = FakeUpstream(clock=harness.clock)
    other.set_default("gpt-A", Ok(text="an entirely different answer"))
    harness.upstream.set_default("gpt-A", Cut(6, tokens=20))
    client = _continuation_client(harness, other, accepts_prefill=False)
    _, chunks, error = harness.stream_chat(client)
    assert error is not None
    assert len(text_of(chunks).split()) == 6
    [sent] = other.requests
    assert sent.json is not None
    assert [m["role"] for m in sent.json["messages"]] == ["user"]


def test_failing_function_is_skipped(harness: Harness) -> None:
    """A fallback function that raises is skipped: the next rung answers, nothing leaks."""
    harness.upstream.set_default("gpt-A", Status(503))

    def broken(body: Any, reason: str) -> str:
        raise RuntimeError("bug in user code")

    policy = _policy(
        harness, FallbackStep(kind="function", function="broken"), FallbackStep(kind="canned", text="canned")
    )
    client = harness.client(policy, runtime={"functions": {"broken": broken}})
    assert _ask(harness, client, "P").choices[0].message.content == "canned"
