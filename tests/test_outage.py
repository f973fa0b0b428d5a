"""Outage behaviour an operator signs off: fail over fast, come back fast, answer at once.

Each test is one fault seen through the public API against the fake upstream, on the fake clock:
what the caller gets, after how long, and how many requests reached each target.
"""

from __future__ import annotations

import gc
import json
import string
import tracemalloc

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from resilient_openai import (
    BreakerPolicy,
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    IncompleteStreamError,
    Policy,
    RetryPolicy,
    RetryRule,
    Route,
    Timeouts,
    ValidationPolicy,
    Verdict,
    health,
    provenance,
    resilient,
)
from resilient_openai.observe.events import CallCompleted
from resilient_openai.testing import (
    Cut,
    Delay,
    FakeClock,
    FakeUpstream,
    Garbage,
    Ok,
    Reset,
    Silence,
    Stall,
    Status,
)

from .conftest import Harness, text_of

BACKUP = FallbackStep(kind="model", model="gpt-B")
LIMITS = Timeouts(total=60.0, attempt=10.0, first_token=10.0, stream_idle=10.0)


def _route(*steps: FallbackStep) -> FallbackPolicy:
    return FallbackPolicy(routes={"gpt-A": Route(steps=steps)})


def test_a_silent_primary_is_waited_on_once_when_the_route_goes_on(harness: Harness) -> None:
    """No answer within the attempt limit: the backup is asked at once, not after two more waits."""
    harness.upstream.set_default("gpt-A", Silence())
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    started = harness.clock.now()
    answer = harness.chat(harness.client(Policy(timeouts=LIMITS, fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "backup"
    assert harness.upstream.count(model="gpt-A") == 1
    assert harness.clock.now() - started == pytest.approx(10.0)
    record = provenance(answer)
    assert record is not None
    assert (record.source, record.reason) == ("fallback_model", "timeout")


def test_a_hang_up_after_a_long_silence_is_not_paid_again(harness: Harness) -> None:
    """The upstream held the request for 8 s of a 10 s limit, then dropped it: fail over at once."""
    harness.upstream.set_default("gpt-A", Delay(8.0, then=Reset()))
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    answer = harness.chat(harness.client(Policy(timeouts=LIMITS, fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "backup"
    assert harness.upstream.count(model="gpt-A") == 1


def test_a_quick_connection_error_is_still_retried(harness: Harness) -> None:
    """A drop that cost nothing is worth another try on the same target."""
    harness.upstream.script("gpt-A", [Reset()])
    harness.upstream.set_default("gpt-A", Ok(text="primary"))
    answer = harness.chat(harness.client(Policy(timeouts=LIMITS, fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "primary"
    assert harness.upstream.count(model="gpt-A") == 2


def test_without_a_next_step_a_timeout_is_retried_as_the_sdk_does(harness: Harness) -> None:
    """Nowhere else to go: the SDK's own policy (three attempts) stays."""
    harness.upstream.set_default("gpt-A", Silence())
    with pytest.raises(openai.APITimeoutError):
        harness.chat(harness.client(Policy(timeouts=LIMITS)))
    assert harness.upstream.count(model="gpt-A") == 3


def test_an_open_circuit_answers_at_once_by_default(harness: Harness) -> None:
    """No fallback and an open circuit: CircuitOpenError immediately, with retry_after."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(Policy())
    for _ in range(2):  # 3 attempts each: the fifth consecutive failure opens the circuit
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)
    sent = harness.upstream.count()
    started = harness.clock.now()
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert harness.clock.now() == started
    assert harness.upstream.count() == sent
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 5.0


def test_a_day_long_retry_after_holds_the_circuit_no_longer_than_break_max(harness: Harness) -> None:
    """``Retry-After: 86400`` may lengthen a break, never past ``break_max`` (20 s by default)."""
    harness.upstream.set_default("gpt-A", Status(503, headers={"retry-after": "86400"}))
    client = harness.client(Policy())
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert caught.value.retry_after == pytest.approx(20.0)


def test_defaults_ride_out_a_minute_long_outage_and_come_back_quickly(harness: Harness) -> None:
    """503 for 60 s, a call every 4 s, a fallback configured, default policy otherwise: every call
    is answered, once the circuit is open the primary sees one probe per open period, and it
    serves again within 30 s of its recovery."""
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    client = harness.client(Policy(fallback=_route(BACKUP)))
    start = harness.clock.now()
    primary_back: float | None = None
    requests_while_open = 0
    for tick in range(30):
        at = start + tick * 4.0
        harness.clock.advance(max(at - harness.clock.now(), 0.0))
        down = harness.clock.now() - start < 60.0
        harness.upstream.set_default("gpt-A", Status(503) if down else Ok(text="primary"))
        shut = [b["state"] for b in health(client)["breakers"] if b["name"].endswith("gpt-A")] != ["closed"]
        before = harness.upstream.count(model="gpt-A")
        answer = harness.chat(client)  # never raises: every call is answered
        sent = harness.upstream.count(model="gpt-A") - before
        record = provenance(answer)
        assert record is not None
        if record.source == "upstream" and primary_back is None:
            primary_back = harness.clock.now() - start
        if shut and down:
            requests_while_open += sent
            assert sent <= 1  # one probe per open period, never a retry
    assert primary_back is not None
    assert primary_back - 60.0 <= 30.0
    # Breaks of 5, 10, 20, 20 ... s over the rest of the outage: a handful of probes, not one per call.
    assert requests_while_open <= 5


# -- garbage in, nothing out -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", ["<html><body>502 Bad Gateway</body></html>", {"unexpected": "shape"}], ids=["html", "no-choices"]
)
def test_a_malformed_200_is_a_failure_never_an_answer(harness: Harness, body: object) -> None:
    """A 200 that is not an answer is counted by the breaker, falls back at once (the route goes
    on), and is never stored as "the last good answer"."""
    harness.upstream.set_default("gpt-A", Garbage(body))  # type: ignore[arg-type]
    canned = FallbackStep(kind="canned", text="busy")
    policy = Policy(
        retry=RetryPolicy(rules={Verdict.MALFORMED_RESPONSE: RetryRule(attempts=2, base=0.01, cap=0.01)}),
        breaker=BreakerPolicy(fail_max=2),
        fallback=_route(FallbackStep(kind="cache"), canned),
    )
    client = harness.client(policy)
    for _ in range(2):
        record = provenance(harness.chat(client))
        assert record is not None
        assert (record.source, record.reason) == ("canned", "malformed_response")
    assert harness.upstream.count(model="gpt-A") == 2
    assert [b["state"] for b in health(client)["breakers"]] == ["open"]
    assert health(client)["cache"]["stores"] == 0


def test_without_a_fallback_a_malformed_200_is_the_sdks_validation_error(harness: Harness) -> None:
    """Nothing else to answer: the caller gets the SDK's own APIResponseValidationError."""
    harness.upstream.set_default("gpt-A", Garbage("<html>oops</html>"))
    with pytest.raises(openai.APIResponseValidationError) as caught:
        harness.chat(harness.client(Policy(retry=RetryPolicy(rules={}))))
    record = provenance(caught.value)
    assert record is not None
    assert record.reason == "malformed_response"


_HEADER_NAMES = st.sampled_from(
    ["content-type", "retry-after", "retry-after-ms", "x-should-retry", "content-encoding", "x-request-id"]
)
_BODIES = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
    st.just(b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": 7}]}'),
)


@settings(max_examples=150, deadline=None)
@given(
    status=st.sampled_from([200, 200, 200, 201, 204, 301, 400, 404, 409, 418, 429, 500, 503, 599]),
    body=_BODIES,
    headers=st.dictionaries(_HEADER_NAMES, st.text(alphabet=string.printable, max_size=24), max_size=4),
    stream=st.booleans(),
)
def test_nothing_but_sdk_errors_or_ours_ever_leaves_the_chain(
    status: int, body: bytes, headers: dict[str, str], stream: bool
) -> None:
    """Any status, body and headers: an answer of the right type, or an ``openai.OpenAIError``."""
    safe = {k: v for k, v in headers.items() if "\r" not in v and "\n" not in v}

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers=safe, content=body)

    raw = openai.OpenAI(
        api_key="sk-property", base_url="http://property.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )  # fmt: skip
    policy = Policy(
        retry=RetryPolicy(rules={}),
        timeouts=Timeouts(total=5.0, attempt=1.0, connect=1.0, first_token=1.0, stream_idle=1.0),
    )
    client = resilient(raw, policy, clock=FakeClock())
    try:
        result = client.chat.completions.create(
            model="gpt-A", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            for chunk in result:
                assert isinstance(chunk, ChatCompletionChunk)
        else:
            assert isinstance(result, ChatCompletion)
            assert isinstance(result.choices, list)
    except openai.OpenAIError:
        pass


# -- streams that break after the first token ----------------------------------------------


def test_a_broken_stream_says_what_happened_on_the_error_and_on_the_stream(harness: Harness) -> None:
    """A cut after three chunks: the error's provenance and the stream's own both record the
    attempt as interrupted, and listeners see the call end in that error, not as a success."""
    harness.upstream.set_default("gpt-A", Cut(3))
    events: list[object] = []
    client = harness.client(Policy(), runtime={"listeners": (events.append,)})
    stream, chunks, error = harness.stream_chat(client)
    assert isinstance(error, IncompleteStreamError)
    assert chunks
    on_error, on_stream = provenance(error), provenance(stream)
    assert on_error is not None
    assert on_stream is not None
    assert on_error.source is None
    assert on_error.reason == on_stream.reason == "stream_interrupted"
    assert [a.verdict for a in on_error.attempts] == ["stream_interrupted"]
    assert on_stream.attempts == on_error.attempts
    completed = [e for e in events if isinstance(e, CallCompleted)]
    assert [(e.source, e.verdict, e.error) for e in completed] == [
        (None, "stream_interrupted", "IncompleteStreamError")
    ]


def test_a_finished_stream_completes_when_it_ends(harness: Harness) -> None:
    """A healthy stream is one successful call, reported once, when the caller has read it."""
    events: list[object] = []
    client = harness.client(Policy(), runtime={"listeners": (events.append,)})
    _, _, error = harness.stream_chat(client)
    assert error is None
    completed = [e for e in events if isinstance(e, CallCompleted)]
    assert [(e.source, e.verdict, e.error) for e in completed] == [("upstream", "success", None)]


def _rescue_policy(*steps: FallbackStep, continuation: bool = True) -> Policy:
    return Policy(
        retry=RetryPolicy(rules={}),
        fallback=FallbackPolicy(routes={"gpt-A": Route(steps=steps)}, continuation=continuation),
    )


ANSWER = "one two three four five six seven eight"


def test_a_cut_stream_is_finished_by_splicing_a_regenerated_answer(harness: Harness) -> None:
    """Cut after six words; the backup model gives the same answer: the caller reads every word
    exactly once, seamlessly, and provenance says the answer was spliced by the backup."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    harness.upstream.set_default("gpt-B", Ok(text=ANSWER))
    stream, chunks, error = harness.stream_chat(harness.client(_rescue_policy(BACKUP)))
    assert error is None
    assert text_of(chunks) == ANSWER
    record = provenance(stream)
    assert record is not None
    assert (record.source, record.model, record.rescue) == ("fallback_model", "gpt-B", "spliced")
    assert record.reason == "stream_interrupted"


def test_a_cut_stream_is_continued_on_a_model_step_that_accepts_a_prefill(harness: Harness) -> None:
    """A model step declared ``accepts_prefill`` is asked to continue the delivered text."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    harness.upstream.set_default("gpt-B", Ok(text=" seven eight"))
    step = FallbackStep(kind="model", model="gpt-B", accepts_prefill=True)
    stream, chunks, error = harness.stream_chat(harness.client(_rescue_policy(step)))
    assert error is None
    assert text_of(chunks) == ANSWER
    [sent] = [r for r in harness.upstream.requests if r.model == "gpt-B"]
    assert sent.json is not None
    assert sent.json["messages"][-1] == {"role": "assistant", "content": "one two three four five six"}
    record = provenance(stream)
    assert record is not None
    assert record.rescue == "continued"


def test_a_refused_prefill_is_never_the_callers_error(harness: Harness) -> None:
    """The step says no to the prefill (400): the question is asked again there and spliced."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    harness.upstream.script("gpt-B", [Status(400, message="assistant prefill is not supported")])
    harness.upstream.set_default("gpt-B", Ok(text=ANSWER))
    step = FallbackStep(kind="model", model="gpt-B", accepts_prefill=True)
    stream, chunks, error = harness.stream_chat(harness.client(_rescue_policy(step)))
    assert error is None
    assert text_of(chunks) == ANSWER
    record = provenance(stream)
    assert record is not None
    assert record.rescue == "spliced"


def test_with_rescue_off_a_cut_stream_raises_at_once(harness: Harness) -> None:
    """``continuation = false``: the partial text in the typed error, no other step asked."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    _, _, error = harness.stream_chat(harness.client(_rescue_policy(BACKUP, continuation=False)))
    assert isinstance(error, IncompleteStreamError)
    assert error.partial_text == "one two three four five six"
    assert harness.upstream.count(model="gpt-B") == 0


# -- time limits inside a stream ---------------------------------------------------------------

STREAM_LIMITS = Timeouts(total=120.0, attempt=60.0, first_token=45.0, stream_idle=20.0)


def test_first_token_bounds_the_wait_for_the_first_content_event(harness: Harness) -> None:
    """Headers at once, first token after 25 s: within ``first_token`` (45 s), though longer than
    ``stream_idle`` (20 s): answered in full, one request."""
    harness.upstream.set_default("gpt-A", Stall(0, 25.0, text=ANSWER))
    started = harness.clock.now()
    _, chunks, error = harness.stream_chat(harness.client(Policy(timeouts=STREAM_LIMITS)))
    assert error is None
    assert text_of(chunks) == ANSWER
    assert harness.upstream.count() == 1
    assert harness.clock.now() - started == pytest.approx(25.0)


def test_a_first_token_later_than_first_token_fails_over(harness: Harness) -> None:
    """First token after 50 s with ``first_token`` 45 s: the backup answers after 45 s."""
    harness.upstream.set_default("gpt-A", Stall(0, 50.0, text=ANSWER))
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    started = harness.clock.now()
    policy = Policy(timeouts=STREAM_LIMITS, fallback=_route(BACKUP))
    _, chunks, error = harness.stream_chat(harness.client(policy))
    assert error is None
    assert text_of(chunks) == "backup"
    assert harness.clock.now() - started == pytest.approx(45.0)


def test_stream_idle_bounds_the_gaps_after_the_first_token(harness: Harness) -> None:
    """After the first token a 25 s gap is a stall at 20 s (``stream_idle``), not at 45 s."""
    harness.upstream.set_default("gpt-A", Stall(3, 25.0, text=ANSWER))
    started = harness.clock.now()
    policy = Policy(timeouts=STREAM_LIMITS, fallback=FallbackPolicy(continuation=False))
    _, _, error = harness.stream_chat(harness.client(policy))
    assert isinstance(error, IncompleteStreamError)
    assert error.reason == "stalled"
    assert harness.clock.now() - started == pytest.approx(20.0)


def test_the_total_deadline_holds_inside_a_stream(harness: Harness) -> None:
    """Headers after 12 s of a 30 s budget, then a stall: the stream ends at the deadline, not one
    idle gap later."""
    harness.upstream.set_default("gpt-A", Delay(12.0, then=Stall(3, 25.0, text=ANSWER)))
    limits = Timeouts(total=30.0, attempt=20.0, first_token=20.0, stream_idle=20.0)
    started = harness.clock.now()
    policy = Policy(timeouts=limits, fallback=FallbackPolicy(continuation=False))
    _, _, error = harness.stream_chat(harness.client(policy))
    assert isinstance(error, IncompleteStreamError)
    assert harness.clock.now() - started == pytest.approx(30.0)


# -- bounded memory --------------------------------------------------------------------------


def test_many_model_names_leave_memory_flat(upstream: FakeUpstream, clock: FakeClock) -> None:
    """Every per-model memo is bounded: past the bounds, more distinct model names cost the
    library nothing (measured on its own allocations: the fake upstream records every request)."""
    harness = Harness("sync", upstream, clock)
    client = harness.client(Policy(breaker=BreakerPolicy(max_breakers=16)))

    def ask(first: int, count: int) -> None:
        for number in range(first, first + count):
            harness.chat(client, model=f"model-{number}")

    tracemalloc.start()
    try:
        ask(0, 100)  # every bound is reached
        gc.collect()
        before = tracemalloc.take_snapshot()
        ask(100, 400)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, "*/resilient_openai/*"), tracemalloc.Filter(False, "*/testing/*")]
    diff = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    assert sum(stat.size_diff for stat in diff) < 16 * 1024
    assert len(health(client)["breakers"]) <= 16


def test_without_a_next_step_a_malformed_200_is_retried_by_the_rules(harness: Harness) -> None:
    """Nowhere else to go: a malformed 200 is retried like a server error, then raised."""
    harness.upstream.set_default("gpt-A", Garbage("<html>oops</html>"))
    with pytest.raises(openai.APIResponseValidationError):
        harness.chat(harness.client(Policy()))
    assert harness.upstream.count(model="gpt-A") == 3


def test_a_rate_limited_primary_fails_over_at_once_when_the_route_goes_on(harness: Harness) -> None:
    """429 with a 1 s Retry-After and a fallback step: the backup answers now, and the limited
    primary gets no second request."""
    harness.upstream.set_default("gpt-A", Status(429, headers={"retry-after": "1"}))
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    started = harness.clock.now()
    answer = harness.chat(harness.client(Policy(fallback=_route(BACKUP))))
    assert answer.choices[0].message.content == "backup"
    assert harness.clock.now() == started
    assert harness.upstream.count(model="gpt-A") == 1


def test_without_a_next_step_a_rate_limit_waits_the_servers_retry_after(harness: Harness) -> None:
    """Nowhere else to go: the server's Retry-After is honoured, as the SDK does."""
    harness.upstream.script("gpt-A", [Status(429, headers={"retry-after": "1"})])
    harness.upstream.set_default("gpt-A", Ok(text="primary"))
    started = harness.clock.now()
    answer = harness.chat(harness.client(Policy()))
    assert answer.choices[0].message.content == "primary"
    assert harness.clock.now() - started == pytest.approx(1.0)


def test_a_rescued_stream_records_the_interruption_and_who_finished_it(harness: Harness) -> None:
    """After a splice the primary's attempt reads as interrupted and the backup's as the answer."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    harness.upstream.set_default("gpt-B", Ok(text=ANSWER))
    stream, _, error = harness.stream_chat(harness.client(_rescue_policy(BACKUP)))
    assert error is None
    record = provenance(stream)
    assert record is not None
    assert [(a.model, a.verdict) for a in record.attempts] == [
        ("gpt-A", "stream_interrupted"),
        ("gpt-B", "success"),
    ]


def test_a_rescue_that_breaks_too_still_reports_everything_delivered(harness: Harness) -> None:
    """The backup's answer breaks as well and nothing else can finish it: the error carries all
    the text the caller received, from both streams."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    harness.upstream.set_default("gpt-B", Cut(7, text=ANSWER))
    _, chunks, error = harness.stream_chat(harness.client(_rescue_policy(BACKUP)))
    assert isinstance(error, IncompleteStreamError)
    assert text_of(chunks) == "one two three four five six seven"
    assert error.partial_text == "one two three four five six seven"
    record = provenance(error)
    assert record is not None
    assert [(a.model, a.verdict) for a in record.attempts] == [
        ("gpt-A", "stream_interrupted"),
        ("gpt-B", "stream_interrupted"),
    ]


# -- requests the upstream will never accept ---------------------------------------------------


def test_a_context_length_error_walks_to_a_roomier_model_never_to_cache_or_canned(harness: Harness) -> None:
    """No ``context_model``: a too-long prompt goes to the route's model step with a larger window,
    skipping one with a smaller window and never answered by the cache or a canned text."""
    harness.upstream.set_default("gpt-A", Status(400, code_str="context_length_exceeded"))
    harness.upstream.set_default("gpt-big", Ok(text="roomy"))
    steps = (
        FallbackStep(kind="model", model="gpt-small"),
        FallbackStep(kind="cache"),
        FallbackStep(kind="model", model="gpt-big"),
        FallbackStep(kind="canned", text="busy"),
    )
    windows = ValidationPolicy(context_windows={"gpt-A": 8_000, "gpt-small": 4_000, "gpt-big": 128_000})
    policy = Policy(validation=windows, fallback=_route(*steps))
    answer = harness.chat(harness.client(policy))
    assert answer.choices[0].message.content == "roomy"
    assert harness.upstream.count(model="gpt-small") == 0
    record = provenance(answer)
    assert record is not None
    assert (record.source, record.reason) == ("fallback_model", "context_length_exceeded")


def test_a_context_length_error_with_nowhere_roomier_is_the_callers_error(harness: Harness) -> None:
    """Only smaller models, the cache and a canned text: the caller gets the upstream's own 400."""
    harness.upstream.set_default("gpt-A", Status(400, code_str="context_length_exceeded"))
    steps = (FallbackStep(kind="model", model="gpt-small"), FallbackStep(kind="canned", text="busy"))
    windows = ValidationPolicy(context_windows={"gpt-A": 8_000, "gpt-small": 4_000})
    with pytest.raises(openai.BadRequestError):
        harness.chat(harness.client(Policy(validation=windows, fallback=_route(*steps))))
    assert harness.upstream.count(model="gpt-small") == 0


def test_a_step_that_fails_its_prefill_with_an_outage_is_not_asked_again(harness: Harness) -> None:
    """The prefill attempt meets a 503: that step is down, so the rescue moves on instead of
    asking it to regenerate; with nothing after it, the caller gets the partial text."""
    harness.upstream.set_default("gpt-A", Cut(6, text=ANSWER))
    harness.upstream.set_default("gpt-B", Status(503))
    step = FallbackStep(kind="model", model="gpt-B", accepts_prefill=True)
    _, _, error = harness.stream_chat(harness.client(_rescue_policy(step)))
    assert isinstance(error, IncompleteStreamError)
    assert error.partial_text == "one two three four five six"
    assert harness.upstream.count(model="gpt-B") == 1
