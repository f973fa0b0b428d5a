"""The fake upstream on a loopback socket, through real clients: real connections, real cuts."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest

from resilient_openai.testing import Cut, Delay, FakeUpstream, Hold, Ok, Reset, Silence, Status

if TYPE_CHECKING:
    from collections.abc import Iterator

    from openai.types.chat import ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def base_url(upstream: FakeUpstream) -> Iterator[str]:
    """The upstream served on a loopback port for the test's duration."""
    with upstream.serve() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    """A real client on the socket, without retries."""
    with openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0) as sdk:
        yield sdk


def contents(chunks: list[Any]) -> list[str]:
    """The non-empty content deltas of chat chunks."""
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def wait_for(predicate: Any) -> None:
    """Poll ``predicate`` briefly (a few ms at a time) until it holds."""
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def test_base_url_is_loopback_v1(base_url: str) -> None:
    """The base URL is http://127.0.0.1:PORT/v1 on a real port."""
    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/v1")
    assert int(base_url.split(":")[2].split("/")[0]) > 0


def test_success(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """A plain answer over the socket, recorded with its path and headers."""
    upstream.script("m", [Ok("over the wire")])
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "over the wire"
    (recorded,) = upstream.requests
    assert (recorded.path, recorded.model, recorded.headers["authorization"]) == (
        "/v1/chat/completions",
        "m",
        "Bearer sk-test",
    )
    assert completion._request_id == recorded.request_id


def test_streamed_answer_is_chunked(base_url: str, client: openai.OpenAI) -> None:
    """A stream arrives with chunked encoding and parses into every token."""
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert "".join(contents(chunks)) == " ".join(f"tok{i}" for i in range(12))
    with httpx2.stream(
        "POST", f"{base_url}/chat/completions", json={"model": "m", "messages": [], "stream": True}
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.read().endswith(b"data: [DONE]\n\n")


def test_responses_and_embeddings(client: openai.OpenAI) -> None:
    """The other endpoints answer over the socket too."""
    assert client.responses.create(model="m", input="x").output_text.startswith("tok0")
    events = list(client.responses.create(model="m", input="x", stream=True))
    assert events[-1].type == "response.completed"
    assert len(client.embeddings.create(model="e", input="x").data[0].embedding) == 8


def test_503(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """An HTTP error with its headers and body."""
    upstream.script("m", [Status(503, headers={"retry-after": "1"})])
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.type == "server_error"


def test_cut_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """The connection really closes mid-stream, after the delivered tokens."""
    upstream.script("m", [Cut(7, tokens=20)])
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError) as caught:
        received.extend(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert len(contents(received)) == 7
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)


def test_cut_json_body(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """A non-streamed body shorter than its content-length is a connection error."""
    upstream.script("m", [Cut(0)])
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)


def test_reset(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """The server closes the connection before any header, and the next request still works."""
    upstream.script("m", [Reset()])
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices
    assert upstream.count("m") == 2


def test_real_delay_and_timeout(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """Waits are real here: a short delay answers, silence meets the client's read timeout."""
    upstream.script("m", [Delay(0.002, Ok("late")), Silence()])
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == "late"
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MESSAGES, timeout=httpx2.Timeout(5.0, read=0.005))


def test_hold_until_released(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """A held request answers once the event is set."""
    release = threading.Event()
    upstream.script("m", [Hold(release, Ok("go"))])
    answers: list[str | None] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
        )
    )
    caller.start()
    wait_for(lambda: upstream.count("m") == 1)
    assert answers == []
    release.set()
    caller.join(5)
    assert answers == ["go"]


async def test_async_client_on_the_socket(base_url: str, upstream: FakeUpstream) -> None:
    """The async client reads answers and cut streams from the socket."""
    upstream.script("m", [Ok("async"), Cut(2, tokens=5)])
    received: list[Any] = []
    async with openai.AsyncOpenAI(api_key="k", base_url=base_url, max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert completion.choices[0].message.content == "async"

        async def read_stream() -> None:
            async for chunk in await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                received.append(chunk)

        with pytest.raises(openai.APIConnectionError):
            await read_stream()
    assert len(contents(received)) == 2


def test_exit_stops_the_server_even_with_a_request_in_flight(upstream: FakeUpstream) -> None:
    """Leaving serve() closes the port and ends a silent request at once."""
    upstream.script("m", [Silence()])
    errors: list[BaseException] = []
    with upstream.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        sdk = openai.OpenAI(api_key="k", base_url=url, max_retries=0)

        def call() -> None:
            try:
                sdk.chat.completions.create(model="m", messages=MESSAGES)
            except openai.APIError as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(lambda: upstream.count("m") == 1)
        started = time.monotonic()
    caller.join(5)
    sdk.close()
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1
    assert isinstance(errors[0], openai.APIConnectionError)
    assert not any(t.name == "fake-openai-upstream" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
