"""The fake upstream in process, driven through real ``openai.OpenAI`` and ``openai.AsyncOpenAI`` clients.

Each scenario runs through both shells: the sync client on ``upstream.transport()`` and the async
client on ``upstream.async_transport()``. Waits go through a FakeClock, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from resilient_openai.testing import (
    Cut,
    Delay,
    FakeClock,
    FakeUpstream,
    Fault,
    Garbage,
    Hold,
    Malformed,
    Ok,
    OneOf,
    RecordedRequest,
    Reset,
    Silence,
    Stall,
    Status,
)

if TYPE_CHECKING:
    from collections.abc import Callable

BASE_URL = "http://fake.test/v1"
MESSAGES = [{"role": "user", "content": "say something"}]


@dataclass
class Outcome:
    """What one call produced: its value or its exception, and the stream items seen before either."""

    value: Any = None
    error: BaseException | None = None
    items: list[Any] = field(default_factory=list)


@dataclass
class Shell:
    """The sync client on ``transport()`` or the async client on ``async_transport()``."""

    upstream: FakeUpstream
    is_async: bool

    def call(self, method: str, **kwargs: Any) -> Outcome:
        """Call ``method`` on a fresh client, reading any stream to its end or its error."""
        if self.is_async:
            return asyncio.run(self._acall(method, **kwargs))
        http_client = httpx2.Client(transport=self.upstream.transport())
        outcome = Outcome()
        with openai.OpenAI(
            api_key="sk-secret", base_url=BASE_URL, max_retries=0, http_client=http_client
        ) as sdk:
            try:
                result = attrgetter(method)(sdk)(**kwargs)
                if isinstance(result, openai.Stream):
                    outcome.items.extend(result)
                else:
                    outcome.value = result
            except Exception as exc:
                outcome.error = exc
        return outcome

    async def _acall(self, method: str, **kwargs: Any) -> Outcome:
        http_client = httpx2.AsyncClient(transport=self.upstream.async_transport())
        outcome = Outcome()
        async with openai.AsyncOpenAI(
            api_key="sk-secret", base_url=BASE_URL, max_retries=0, http_client=http_client
        ) as sdk:
            try:
                result = await attrgetter(method)(sdk)(**kwargs)
                if isinstance(result, openai.AsyncStream):
                    async for item in result:
                        outcome.items.append(item)
                else:
                    outcome.value = result
            except Exception as exc:
                outcome.error = exc
        return outcome


@pytest.fixture(params=["sync", "async"])
def shell(request: pytest.FixtureRequest, upstream: FakeUpstream) -> Shell:
    """Each scenario once through the sync client and once through the async client."""
    return Shell(upstream, is_async=request.param == "async")


def chat(shell: Shell, model: str = "m", **kwargs: Any) -> Outcome:
    """A chat completion for ``model``."""
    return shell.call("chat.completions.create", model=model, messages=MESSAGES, **kwargs)


def deltas(items: list[Any]) -> list[str]:
    """The non-empty content deltas of chat chunks."""
    return [c.choices[0].delta.content for c in items if c.choices and c.choices[0].delta.content]


# -- answers -----------------------------------------------------------------------------------


def test_ok_answers_with_the_default_text(shell: Shell) -> None:
    """By default every request gets ``tok0 ... tok11`` for the model it asked."""
    out = chat(shell, "gpt-test")
    assert out.error is None
    assert out.value.choices[0].message.content == " ".join(f"tok{i}" for i in range(12))
    assert out.value.model == "gpt-test"
    assert out.value.usage.completion_tokens == 12
    assert out.value.usage.prompt_tokens == 2
    assert out.value._request_id == shell.upstream.requests[0].request_id


def test_ok_with_text_and_another_model(shell: Shell) -> None:
    """Ok can set the text and answer as another model."""
    shell.upstream.script("m", [Ok("bonjour", model="m-fallback")])
    out = chat(shell)
    assert (out.value.choices[0].message.content, out.value.model) == ("bonjour", "m-fallback")


def test_ok_latency_advances_the_clock(shell: Shell, clock: FakeClock) -> None:
    """Latency is spent on the fake clock, not in real time."""
    shell.upstream.script("m", [Ok(tokens=2, latency=1.5)])
    out = chat(shell)
    assert out.value.choices[0].message.content == "tok0 tok1"
    assert clock.sleeps == [1.5]


def test_stream_ok_streams_each_token(shell: Shell) -> None:
    """A streaming request gets a role chunk, one chunk per token, a finish chunk."""
    shell.upstream.script("m", [Ok("a b c")])
    out = chat(shell, stream=True)
    assert out.error is None
    assert deltas(out.items) == ["a", " b", " c"]
    assert out.items[0].choices[0].delta.role == "assistant"
    assert out.items[-1].choices[0].finish_reason == "stop"
    assert all(isinstance(item, ChatCompletionChunk) and item.usage is None for item in out.items)


def test_stream_include_usage_adds_the_usage_chunk(shell: Shell) -> None:
    """stream_options.include_usage is honoured."""
    out = chat(shell, stream=True, stream_options={"include_usage": True})
    assert out.items[-1].choices == []
    assert out.items[-1].usage.completion_tokens == 12


def test_stream_usage_can_be_forced_either_way(shell: Shell) -> None:
    """Ok(usage=...) overrides the request's stream_options."""
    shell.upstream.script("m", [Ok(tokens=3, usage=True), Ok(tokens=3, usage=False)])
    assert chat(shell, stream=True).items[-1].usage.total_tokens == 5
    assert chat(shell, stream=True, stream_options={"include_usage": True}).items[-1].usage is None


def test_responses_json_and_stream(shell: Shell) -> None:
    """The Responses API answers as a response object and as the typed event stream."""
    shell.upstream.script("m", [Ok("hello there"), Ok("hello there")])
    out = shell.call("responses.create", model="m", input="hi")
    assert out.value.output_text == "hello there"
    assert out.value.status == "completed"
    out = shell.call("responses.create", model="m", input="hi", stream=True)
    assert out.error is None
    assert [e.type for e in out.items][:2] == ["response.created", "response.in_progress"]
    assert "".join(e.delta for e in out.items if e.type == "response.output_text.delta") == "hello there"
    assert out.items[-1].type == "response.completed"
    assert out.items[-1].response.output_text == "hello there"


def test_embeddings_default_base64_equals_float(shell: Shell) -> None:
    """The SDK's default base64 request decodes to the same vectors as a float request."""
    default = shell.call("embeddings.create", model="emb", input=["a", "b"])
    floats = shell.call("embeddings.create", model="emb", input=["a", "b"], encoding_format="float")
    assert [r.json["encoding_format"] for r in shell.upstream.requests if r.json] == ["base64", "float"]
    assert [d.embedding for d in default.value.data] == [d.embedding for d in floats.value.data]
    assert len(default.value.data[0].embedding) == 8


def test_embeddings_honour_dimensions(shell: Shell) -> None:
    """The request's ``dimensions`` sets the vector length."""
    out = shell.call("embeddings.create", model="emb", input="a", dimensions=3)
    assert len(out.value.data[0].embedding) == 3


def test_models_lists_the_known_models(shell: Shell) -> None:
    """GET /models lists the models scripted, defaulted or asked for."""
    shell.upstream.set_default("gpt-b", Ok())
    chat(shell, "gpt-a")
    out = shell.call("models.list")
    assert sorted(m.id for m in out.value.data) == ["gpt-a", "gpt-b"]


# -- malformed successes ------------------------------------------------------------------------


def _post(upstream: FakeUpstream) -> httpx2.Response:
    """One raw chat request to ``upstream`` in process, bypassing the SDK."""
    with httpx2.Client(transport=upstream.transport()) as client:
        return client.post(f"{BASE_URL}/chat/completions", json={"model": "m", "messages": MESSAGES})


def test_garbage_sends_a_200_with_an_html_body(upstream: FakeUpstream) -> None:
    """Garbage(text) answers 200 with the text as an HTML body, as a misconfigured proxy would."""
    upstream.script("m", [Garbage("<html>Bad gateway</html>")])
    response = _post(upstream)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html>Bad gateway</html>"


def test_garbage_sends_a_200_json_object_without_choices(upstream: FakeUpstream) -> None:
    """Garbage(dict) answers 200 with that JSON object, lacking the fields the SDK expects."""
    upstream.script("m", [Garbage({"id": "chatcmpl-x", "object": "chat.completion"})])
    response = _post(upstream)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"id": "chatcmpl-x", "object": "chat.completion"}
    assert response.headers["x-request-id"].startswith("req_fake")


# -- HTTP errors -------------------------------------------------------------------------------


def test_429_retry_after_reaches_the_exception(shell: Shell) -> None:
    """Status headers reach ``exc.response.headers``."""
    shell.upstream.script("m", [Status(429, headers={"retry-after": "2"})])
    error = chat(shell).error
    assert isinstance(error, openai.RateLimitError)
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["x-request-id"] == shell.upstream.requests[0].request_id
    assert error.type == "requests"


def test_error_codes_reach_the_exception(shell: Shell) -> None:
    """``code_str`` and ``type`` are error.code and error.type."""
    shell.upstream.script(
        "m",
        [
            Status(429, code_str="insufficient_quota", type="insufficient_quota"),
            Status(400, code_str="context_length_exceeded", message="too long"),
            Status(503),
        ],
    )
    quota, too_long, unavailable = chat(shell).error, chat(shell).error, chat(shell).error
    assert isinstance(quota, openai.RateLimitError)
    assert (quota.code, quota.type) == ("insufficient_quota", "insufficient_quota")
    assert isinstance(too_long, openai.BadRequestError)
    assert (too_long.code, too_long.type, too_long.message.endswith("too long")) == (
        "context_length_exceeded",
        "invalid_request_error",
        True,
    )
    assert isinstance(unavailable, openai.InternalServerError)
    assert unavailable.status_code == 503


def test_status_applies_to_streaming_requests(shell: Shell) -> None:
    """A streaming request gets the JSON error before any stream."""
    shell.upstream.script("m", [Status(500)])
    out = chat(shell, stream=True)
    assert isinstance(out.error, openai.InternalServerError)
    assert out.items == []


def test_unknown_path_is_404(shell: Shell) -> None:
    """Endpoints the fake does not serve answer 404 like OpenAI."""
    out = shell.call("completions.create", model="m", prompt="x")
    assert isinstance(out.error, openai.NotFoundError)
    assert "Invalid URL (POST /v1/completions)" in str(out.error)


# -- waits and timeouts on the fake clock ------------------------------------------------------


def test_delay_within_the_timeout_answers_late(shell: Shell, clock: FakeClock) -> None:
    """A delay shorter than the read timeout is spent, then the answer comes."""
    shell.upstream.script("m", [Delay(3.0, Ok("late"))])
    out = chat(shell, timeout=5.0)
    assert out.value.choices[0].message.content == "late"
    assert clock.sleeps == [3.0]


def test_delay_past_the_timeout_times_out(shell: Shell, clock: FakeClock) -> None:
    """A delay longer than the read timeout advances the clock by the timeout and raises."""
    shell.upstream.script("m", [Delay(30.0)])
    assert isinstance(chat(shell, timeout=5.0).error, openai.APITimeoutError)
    assert clock.sleeps == [5.0]


def test_silence_times_out_after_the_read_timeout(shell: Shell, clock: FakeClock) -> None:
    """Silence lasts exactly the read timeout (the SDK default is 600 s)."""
    shell.upstream.script("m", [Silence(), Silence()])
    assert isinstance(chat(shell, timeout=2.0).error, openai.APITimeoutError)
    assert isinstance(chat(shell).error, openai.APITimeoutError)
    assert clock.sleeps == [2.0, 600.0]


def test_silence_without_timeout_refuses_to_hang(shell: Shell) -> None:
    """With no read timeout the fake raises instead of hanging the test."""
    shell.upstream.script("m", [Silence()])
    error = chat(shell, timeout=None).error
    assert isinstance(error, RuntimeError)
    assert "hang forever" in str(error)


def test_reset_drops_the_connection(shell: Shell) -> None:
    """A reset surfaces as a connection error caused by RemoteProtocolError; it is still recorded."""
    shell.upstream.script("m", [Reset()])
    error = chat(shell).error
    assert isinstance(error, openai.APIConnectionError)
    assert not isinstance(error, openai.APITimeoutError)
    assert isinstance(error.__cause__, httpx2.RemoteProtocolError)
    assert str(error.__cause__) == "Server disconnected without sending a response."
    assert shell.upstream.count("m") == 1


# -- stream faults -----------------------------------------------------------------------------


def test_cut_after_40_of_60_yields_40_deltas_then_raises(shell: Shell) -> None:
    """The body is cut after exactly the delivered content chunks."""
    shell.upstream.script("m", [Cut(40, tokens=60)])
    out = chat(shell, stream=True)
    assert deltas(out.items) == ["tok0"] + [f" tok{i}" for i in range(1, 40)]
    assert isinstance(out.error, openai.APIConnectionError)
    assert isinstance(out.error.__cause__, httpx2.RemoteProtocolError)


def test_cut_after_zero_delivers_no_event(shell: Shell) -> None:
    """Cut(0) cuts before the first event: not even the role chunk arrives."""
    shell.upstream.script("m", [Cut(0, tokens=5)])
    out = chat(shell, stream=True)
    assert out.items == []
    assert isinstance(out.error, openai.APIConnectionError)


def test_stall_after_zero_delays_the_first_event(shell: Shell, clock: FakeClock) -> None:
    """Stall(0, ...) is a slow first token: it meets the read timeout before any event."""
    shell.upstream.script("m", [Stall(0, 20.0, tokens=5)])
    out = chat(shell, stream=True, timeout=2.0)
    assert out.items == []
    assert isinstance(out.error, openai.APITimeoutError)
    assert clock.sleeps == [2.0]


def test_cut_responses_stream(shell: Shell) -> None:
    """A Responses stream is cut after as many text deltas."""
    shell.upstream.script("m", [Cut(4, tokens=10)])
    out = shell.call("responses.create", model="m", input="hi", stream=True)
    assert [e.delta for e in out.items if e.type == "response.output_text.delta"] == [
        "tok0",
        " tok1",
        " tok2",
        " tok3",
    ]
    assert isinstance(out.error, openai.APIConnectionError)


def test_cut_non_streaming_body(shell: Shell) -> None:
    """For a JSON answer the body is cut halfway."""
    shell.upstream.script("m", [Cut(0)])
    assert isinstance(chat(shell).error, openai.APIConnectionError)


def test_stall_past_the_read_timeout_times_out(shell: Shell, clock: FakeClock) -> None:
    """A stall longer than the read timeout advances the clock by it and raises APITimeoutError."""
    shell.upstream.script("m", [Stall(5, 30.0, tokens=10)])
    out = chat(shell, stream=True, timeout=4.0)
    assert len(deltas(out.items)) == 5
    assert isinstance(out.error, openai.APITimeoutError)
    assert clock.sleeps == [4.0]


def test_stall_within_the_read_timeout_continues(shell: Shell, clock: FakeClock) -> None:
    """A shorter stall is spent on the clock and the stream completes."""
    shell.upstream.script("m", [Stall(5, 3.0, tokens=10)])
    out = chat(shell, stream=True, timeout=4.0)
    assert out.error is None
    assert len(deltas(out.items)) == 10
    assert clock.sleeps == [3.0]


def test_stall_on_a_json_body_times_out(shell: Shell, clock: FakeClock) -> None:
    """For a JSON answer the stall comes between headers and body."""
    shell.upstream.script("m", [Stall(0, 9.0)])
    assert isinstance(chat(shell, timeout=1.0).error, openai.APITimeoutError)
    assert clock.sleeps == [1.0]


def test_malformed_event_makes_the_sdk_raise(shell: Shell) -> None:
    """The SDK raises on the invalid-JSON event, after the chunks before it."""
    shell.upstream.script("m", [Malformed(3, tokens=10)])
    out = chat(shell, stream=True)
    assert deltas(out.items) == ["tok0", " tok1", " tok2"]
    assert isinstance(out.error, json.JSONDecodeError)


def test_no_done_ends_cleanly(shell: Shell) -> None:
    """Without [DONE] the stream still ends without error, with every token."""
    shell.upstream.script("m", [Ok(tokens=7, done=False)])
    out = chat(shell, stream=True)
    assert out.error is None
    assert len(deltas(out.items)) == 7
    assert out.items[-1].choices[0].finish_reason == "stop"


def test_no_done_responses_stream_lacks_completed(shell: Shell) -> None:
    """A Responses stream has no [DONE]: done=False leaves out response.completed."""
    shell.upstream.script("m", [Ok(tokens=2, done=False)])
    out = shell.call("responses.create", model="m", input="x", stream=True)
    assert out.error is None
    assert out.items[-1].type == "response.output_item.done"


# -- the raw wire, straight through httpx2 ---------------------------------------------------------


def stream_request(model: str = "m") -> dict[str, Any]:
    """A streaming chat request body."""
    return {"model": model, "messages": MESSAGES, "stream": True}


def sse_data(body: bytes) -> list[str]:
    """The data of each event in an event-stream body."""
    return [block.removeprefix("data: ") for block in body.decode().split("\n\n") if block]


def test_headers_and_raw_stream(upstream: FakeUpstream) -> None:
    """Answers carry x-request-id and the right content type; chat streams end with [DONE]."""
    with httpx2.Client(transport=upstream.transport()) as client:
        plain = client.post(f"{BASE_URL}/chat/completions", json={"model": "m", "messages": MESSAGES})
        streamed = client.post(f"{BASE_URL}/chat/completions", json=stream_request())
    assert plain.headers["content-type"] == "application/json"
    assert int(plain.headers["content-length"]) == len(plain.content)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert [plain.headers["x-request-id"], streamed.headers["x-request-id"]] == [
        r.request_id for r in upstream.requests
    ]
    assert sse_data(streamed.content)[-1] == "[DONE]"


def test_malformed_event_leaves_the_rest_readable(upstream: FakeUpstream) -> None:
    """Exactly one event is invalid JSON; the ones after it parse."""
    upstream.script("m", [Malformed(2, tokens=5)])
    with httpx2.Client(transport=upstream.transport()) as client:
        body = client.post(f"{BASE_URL}/chat/completions", json=stream_request()).content
    data = sse_data(body)
    assert data[-1] == "[DONE]"
    broken = []
    for index, item in enumerate(data[:-1]):
        try:
            json.loads(item)
        except ValueError:
            broken.append(index)
    assert broken == [3]  # the role chunk, tok0, tok1, then the broken tok2


def test_no_done_omits_the_terminator(upstream: FakeUpstream) -> None:
    """done=False: the body has no ``data: [DONE]``."""
    upstream.script("m", [Ok(tokens=2, done=False)])
    with httpx2.Client(transport=upstream.transport()) as client:
        body = client.post(f"{BASE_URL}/chat/completions", json=stream_request()).content
    assert b"[DONE]" not in body
    assert body.endswith(b"\n\n")


def test_stall_reads_the_timeout_current_at_the_stall(upstream: FakeUpstream, clock: FakeClock) -> None:
    """A read timeout changed after the headers (idle limit) is the one a stall is held against."""
    upstream.script("m", [Stall(2, 5.0, tokens=4)])
    with httpx2.Client(transport=upstream.transport(), timeout=httpx2.Timeout(10.0)) as client:
        request = client.build_request("POST", f"{BASE_URL}/chat/completions", json=stream_request())
        response = client.send(request, stream=True)
        request.extensions["timeout"]["read"] = 1.0
        with pytest.raises(httpx2.ReadTimeout):
            response.read()
    assert clock.sleeps == [1.0]


async def test_async_stall_reads_the_timeout_current_at_the_stall(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    """The async body re-reads the read timeout at each stall too."""
    upstream.script("m", [Stall(2, 5.0, tokens=4)])
    async with httpx2.AsyncClient(
        transport=upstream.async_transport(), timeout=httpx2.Timeout(10.0)
    ) as client:
        request = client.build_request("POST", f"{BASE_URL}/chat/completions", json=stream_request())
        response = await client.send(request, stream=True)
        request.extensions["timeout"]["read"] = 1.0
        with pytest.raises(httpx2.ReadTimeout):
            await response.aread()
    assert clock.sleeps == [1.0]


# -- hold: requests in flight until the test lets them go ------------------------------------------


def test_hold_blocks_sync_callers_until_released(upstream: FakeUpstream) -> None:
    """Held requests wait in flight (all recorded) until the event is set."""
    release = threading.Event()
    upstream.set_default("m", Hold(release, Ok("released")))
    shell = Shell(upstream, is_async=False)
    results: list[Outcome] = []
    threads = [threading.Thread(target=lambda: results.append(chat(shell))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(500):
        if upstream.count("m") == 3:
            break
        threading.Event().wait(0.002)
    assert upstream.count("m") == 3
    assert results == []
    release.set()
    for thread in threads:
        thread.join(5)
    assert [r.value.choices[0].message.content for r in results] == ["released"] * 3


async def test_hold_does_not_block_the_event_loop(upstream: FakeUpstream) -> None:
    """Held async requests leave the loop free; setting the event releases them all."""
    release = threading.Event()
    upstream.set_default("m", Hold(release))
    http_client = httpx2.AsyncClient(transport=upstream.async_transport())
    async with openai.AsyncOpenAI(
        api_key="k", base_url=BASE_URL, max_retries=0, http_client=http_client
    ) as client:
        calls = [
            asyncio.create_task(client.chat.completions.create(model="m", messages=[])) for _ in range(3)
        ]
        for _ in range(5_000):
            if upstream.count("m") == 3:
                break
            await asyncio.sleep(0.001)
        assert upstream.count("m") == 3
        assert not any(call.done() for call in calls)
        release.set()
        answers = await asyncio.gather(*calls)
    assert [a.choices[0].message.content for a in answers] == [" ".join(f"tok{i}" for i in range(12))] * 3


# -- scripting and counting --------------------------------------------------------------------


def test_script_is_consumed_in_order_then_the_default_applies(shell: Shell) -> None:
    """One scripted fault per request, then the model's default."""
    shell.upstream.script("m", [Status(503), Ok("second")])
    shell.upstream.set_default("m", Ok("default"))
    assert shell.upstream.pending("m") == 2
    outcomes = [chat(shell) for _ in range(3)]
    assert isinstance(outcomes[0].error, openai.InternalServerError)
    assert [o.value.choices[0].message.content for o in outcomes[1:]] == ["second", "default"]
    assert shell.upstream.pending() == 0


def test_scripts_and_defaults_are_per_model_with_a_wildcard(shell: Shell) -> None:
    """A model's own script and default come first; ``"*"`` serves the rest."""
    up = shell.upstream
    up.set_default("*", Ok("everyone"))
    up.set_default("special", Ok("special"))
    up.script("*", [Ok("wild")])
    up.script("own", [Ok("own")])
    assert chat(shell, "own").value.choices[0].message.content == "own"
    assert chat(shell, "own").value.choices[0].message.content == "wild"
    assert chat(shell, "special").value.choices[0].message.content == "special"
    assert chat(shell, "other").value.choices[0].message.content == "everyone"


def test_requests_are_recorded_and_counted(shell: Shell, clock: FakeClock) -> None:
    """Every request is recorded with method, path, model, stream, body and headers."""
    shell.upstream.script("a", [Reset()])
    chat(shell, "a")
    clock.advance(5)
    chat(shell, "b", stream=True)
    shell.call("embeddings.create", model="a", input="x")
    first, second, _ = shell.upstream.requests
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.model, first.stream) == (
        "POST",
        "/v1/chat/completions",
        "a",
        False,
    )
    assert first.json == {"model": "a", "messages": MESSAGES}
    assert first.headers["authorization"] == "Bearer sk-secret"
    assert (second.stream, second.at - first.at) == (True, 5.0)
    assert shell.upstream.count() == 3
    assert shell.upstream.count(model="a") == 2
    assert shell.upstream.count(path="/chat/completions") == 2
    assert shell.upstream.count(model="a", path="/embeddings") == 1
    shell.upstream.reset_counts()
    assert shell.upstream.count() == 0
    assert shell.upstream.requests == []


def test_requests_without_a_model_use_the_wildcard(shell: Shell) -> None:
    """GET /models has no model: it is recorded with model None and takes ``"*"`` faults."""
    shell.upstream.script("*", [Status(503)])
    assert isinstance(shell.call("models.list").error, openai.InternalServerError)
    assert shell.upstream.requests[0].model is None


def test_recorded_request_repr_masks_credentials() -> None:
    """The repr hides authorization and api-key values, keeping the scheme."""
    recorded = RecordedRequest(
        method="POST",
        path="/v1/x",
        model=None,
        stream=False,
        json=None,
        headers={"authorization": "Bearer sk-secret", "api-key": "azure-secret", "accept": "*/*"},
        at=0.0,
    )
    text = repr(recorded)
    assert "secret" not in text
    assert "'authorization': 'Bearer ***'" in text
    assert "'api-key': '***'" in text
    assert "*/*" in text
    assert recorded.headers["authorization"] == "Bearer sk-secret"


# -- the Fault value ---------------------------------------------------------------------------


def test_fault_is_an_immutable_value_with_a_readable_repr() -> None:
    """Faults compare by value, cannot be changed, and repr as their constructor call."""
    assert Status(429, headers={"Retry-After": "2"}) == Status(429, headers={"retry-after": "2"})
    with pytest.raises(AttributeError):
        Ok().text = "x"  # type: ignore[misc]
    assert repr(Status(429, headers={"retry-after": "2"})) == "Status(429, headers={'retry-after': '2'})"
    assert repr(Delay(2.0, Reset())) == "Delay(2.0, then=Reset())"
    assert repr(Cut(40, tokens=8)) == "Cut(40, tokens=8)"
    assert repr(Ok("hi", latency=0.5)) == "Ok(text='hi', latency=0.5)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Status(200), "4xx or 5xx"),
        (lambda: Ok(tokens=-1), "tokens"),
        (lambda: Delay(-1.0), "seconds"),
        (lambda: Cut(-2), "after"),
        (lambda: Stall(0, float("nan")), "seconds"),
    ],
)
def test_fault_constructors_validate(build: Callable[[], Fault], message: str) -> None:
    """Bad arguments fail when the fault is built, naming the argument."""
    with pytest.raises(ValueError, match=message):
        build()


def test_script_rejects_non_faults(upstream: FakeUpstream) -> None:
    """Only Fault values can be scripted."""
    with pytest.raises(TypeError, match="Fault"):
        upstream.script("m", ["ok"])  # type: ignore[list-item]


def test_public_api_is_small_and_sorted() -> None:
    """``resilient_openai.testing`` exports the clock, the fake, its record and the fault values, sorted."""
    import resilient_openai.testing as testing

    assert testing.__all__ == sorted(testing.__all__)
    faults = [
        "Cut",
        "Delay",
        "Garbage",
        "Hold",
        "Malformed",
        "Ok",
        "OneOf",
        "Reset",
        "Silence",
        "Stall",
        "Status",
    ]
    assert testing.__all__ == sorted(["FakeClock", "FakeUpstream", "Fault", "RecordedRequest", *faults])
    assert all(hasattr(testing, name) for name in testing.__all__)


def test_one_of_draws_a_fault_per_request_and_records_it(upstream: FakeUpstream) -> None:
    """OneOf answers each request with one of its faults, seeded, and the record names the one drawn."""
    mix = OneOf((Ok("a"), Status(503)), seed=3)
    upstream.set_default("m", mix)
    for _ in range(20):
        Shell(upstream, is_async=False).call("chat.completions.create", model="m", messages=MESSAGES)
    drawn = [r.fault for r in upstream.requests]
    assert set(map(repr, drawn)) == {"Ok(text='a')", "Status(503)"}
    assert all(any(fault is choice for choice in mix.faults) for fault in drawn)
    again = OneOf((Ok("a"), Status(503)), seed=3)
    assert [repr(again.draw()) for _ in range(20)] == list(map(repr, drawn))


def test_take_removes_the_requests_of_one_call(upstream: FakeUpstream) -> None:
    """take() hands back the requests carrying one id header, with the fault that answered each."""
    upstream.script("m", [Status(503), Ok("fine")])
    for call in ("c1", "c2"):
        Shell(upstream, is_async=False).call(
            "chat.completions.create", model="m", messages=MESSAGES, extra_headers={"X-Call": call}
        )
    taken = upstream.take("x-call", "c1")
    assert [r.fault for r in taken] == [Status(503)]
    assert [r.headers["x-call"] for r in upstream.requests] == ["c2"]
    assert upstream.take("x-call", "c1") == []


def test_models_can_be_declared_up_front() -> None:
    """``models=`` lists models before any request names them."""
    upstream = FakeUpstream(models=["declared"])
    out = Shell(upstream, is_async=False).call("models.list")
    assert [m.id for m in out.value.data] == ["declared"]
