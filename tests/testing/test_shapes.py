"""The wire-shape builders: every shape parses with the SDK's own types, field for field."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from resilient_openai import _shapes

STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def unknown_fields(value: object, path: str = "$") -> list[str]:
    """Every field the SDK's type does not declare: a typo in a builder shows up here."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{name}" for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += unknown_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += unknown_fields(item, f"{path}[{index}]")
    return found


# -- tokens ------------------------------------------------------------------------------------


def test_split_tokens_keeps_leading_whitespace() -> None:
    """Each token carries the whitespace before it; trailing whitespace is its own token."""
    assert _shapes.split_tokens("Hello  big\nworld ") == ["Hello", "  big", "\nworld", " "]


@given(st.text())
def test_split_tokens_joins_back_to_the_text(text: str) -> None:
    """Joining the tokens gives back exactly the text, whatever it is."""
    assert "".join(_shapes.split_tokens(text)) == text


def test_placeholder_text_has_the_requested_token_count() -> None:
    """The default answer is ``tok0 ... tokN-1``."""
    assert _shapes.placeholder_text(3) == "tok0 tok1 tok2"
    assert _shapes.count_tokens(_shapes.placeholder_text(60)) == 60
    assert _shapes.placeholder_text(0) == ""


# -- chat completions --------------------------------------------------------------------------


def test_chat_completion_parses_as_the_sdk_type() -> None:
    """A chat.completion validates as ChatCompletion with no undeclared field."""
    parsed = ChatCompletion.model_validate(_shapes.chat_completion("Hi there", "gpt-x", prompt_tokens=5))
    assert unknown_fields(parsed) == []
    assert parsed.choices[0].message.content == "Hi there"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens, parsed.usage.total_tokens) == (
        5,
        2,
        7,
    )


def test_chat_completion_defaults_are_deterministic() -> None:
    """Same arguments, same dict: ids derive from the content, created is a constant."""
    first = _shapes.chat_completion("a", "m")
    assert first == _shapes.chat_completion("a", "m")
    assert first["id"].startswith("chatcmpl-")
    assert first["id"] != _shapes.chat_completion("b", "m")["id"]
    assert first["created"] == _shapes.DEFAULT_CREATED


def test_chat_completion_takes_explicit_fields() -> None:
    """id and created are used as given."""
    parsed = ChatCompletion.model_validate(_shapes.chat_completion("x", "m", id="chatcmpl-1", created=7))
    assert (parsed.id, parsed.created) == ("chatcmpl-1", 7)


def test_chat_chunks_stream_the_completion() -> None:
    """Role chunk, one chunk per token, finish chunk; deltas join back to the text."""
    completion = _shapes.chat_completion(" Hello,  world!", "m")
    chunks = [
        ChatCompletionChunk.model_validate(c) for c in _shapes.chat_chunks(completion, include_usage=False)
    ]
    assert all(unknown_fields(chunk) == [] for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == [" Hello,", "  world!"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " Hello,  world!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert {(c.id, c.created, c.model) for c in chunks} == {(completion["id"], completion["created"], "m")}
    assert all(
        c.usage is None and "usage" not in raw
        for c, raw in zip(chunks, _shapes.chat_chunks(completion, include_usage=False), strict=True)
    )


def test_chat_chunks_with_usage_end_with_a_usage_chunk() -> None:
    """include_usage: every chunk has usage null, and a last chunk with no choices has the usage."""
    completion = _shapes.chat_completion("a b c", "m", prompt_tokens=4)
    raw = _shapes.chat_chunks(completion, include_usage=True)
    chunks = [ChatCompletionChunk.model_validate(c) for c in raw]
    assert all(r["usage"] is None for r in raw[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 3)
    assert len(chunks) == 1 + 3 + 1 + 1


# -- server-sent events ------------------------------------------------------------------------


def test_sse_frames_compact_json_and_done() -> None:
    """``data: <compact json>`` blocks, then ``data: [DONE]``."""
    assert _shapes.sse([{"a": 1, "b": [1, 2]}]) == b'data: {"a":1,"b":[1,2]}\n\ndata: [DONE]\n\n'


def test_sse_with_event_names_and_no_done() -> None:
    """event_names adds ``event:`` lines (None for none); done=False leaves out [DONE]."""
    body = _shapes.sse([{"x": 1}, {"y": 2}], done=False, event_names=["first", None])
    assert body == b'event: first\ndata: {"x":1}\n\ndata: {"y":2}\n\n'


def test_sse_sends_strings_verbatim() -> None:
    """A string is the raw data, one data line per line: how a malformed event is sent."""
    assert _shapes.sse(['{"broken', "a\nb"], done=False) == b'data: {"broken\n\ndata: a\ndata: b\n\n'


def test_sse_rejects_mismatched_event_names() -> None:
    """event_names must name every event."""
    with pytest.raises(ValueError, match="1 names for 2 events"):
        _shapes.sse([{}, {}], event_names=["a"])


# -- responses ---------------------------------------------------------------------------------


def test_response_object_parses_as_the_sdk_type() -> None:
    """A completed response validates as Response, with the text as output_text."""
    parsed = Response.model_validate(_shapes.response_object("Hi there", "gpt-x", input_tokens=3))
    assert unknown_fields(parsed) == []
    assert parsed.status == "completed"
    assert parsed.output_text == "Hi there"
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (3, 2)
    assert parsed.id.startswith("resp_")
    assert parsed.output[0].type == "message"
    assert parsed.output[0].id.startswith("msg_")


def test_response_events_are_the_typed_stream() -> None:
    """Events parse with the SDK's event union, in order, with consecutive sequence numbers."""
    response = _shapes.response_object("one two three", "m", id="resp_1", item_id="msg_1")
    events = _shapes.response_events(response)
    parsed = [STREAM_EVENT.validate_python(data) for _, data in events]
    assert all(unknown_fields(event) == [] for event in parsed)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [name for name, _ in events] == [event.type for event in parsed]
    assert [event.sequence_number for event in parsed] == list(range(len(events)))
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert "".join(deltas) == "one two three"
    assert events[0][1]["response"]["status"] == "in_progress"
    assert events[0][1]["response"]["output"] == []
    assert events[-1][1]["response"] == response
    assert all(data.get("item_id", "msg_1") == "msg_1" for _, data in events)


def test_response_events_reject_other_outputs() -> None:
    """Only message outputs with output_text parts and function calls can be streamed."""
    response = _shapes.response_object("x", "m")
    response["output"] = [{"type": "reasoning", "id": "rs_1"}]
    with pytest.raises(ValueError, match="message and function_call outputs only"):
        _shapes.response_events(response)


def test_response_events_stream_a_function_call() -> None:
    """A function_call output streams as added, its arguments, done."""
    response = _shapes.response_object("", "m", tool_call=("lookup", '{"q":"x"}'))
    kinds = [name for name, _ in _shapes.response_events(response)]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_chat_completion_with_a_tool_call_streams_it_whole() -> None:
    """A tool-call completion has no content, finish_reason tool_calls, and one tool-call chunk."""
    completion = _shapes.chat_completion("", "m", tool_call=("lookup", '{"q":"x"}'))
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["choices"][0]["message"]["content"] is None
    chunks = _shapes.chat_chunks(completion, include_usage=False)
    calls = [
        c["choices"][0]["delta"]["tool_calls"] for c in chunks if "tool_calls" in c["choices"][0]["delta"]
    ]
    assert [call[0]["function"] for call in calls] == [{"name": "lookup", "arguments": '{"q":"x"}'}]


# -- embeddings, models, errors ----------------------------------------------------------------


def test_embeddings_float_parse_and_are_unit_vectors() -> None:
    """Float embeddings validate, have ``dims`` values, unit length, and are deterministic."""
    raw = _shapes.embeddings(["a", "b"], "emb", encoding_format="float", dims=5)
    parsed = CreateEmbeddingResponse.model_validate(raw)
    assert unknown_fields(parsed) == []
    assert [len(item.embedding) for item in parsed.data] == [5, 5]
    assert abs(sum(v * v for v in parsed.data[0].embedding) - 1.0) < 1e-5
    assert parsed.data[0].embedding != parsed.data[1].embedding
    assert raw == _shapes.embeddings(["a", "b"], "emb", encoding_format="float", dims=5)


def test_embeddings_base64_is_little_endian_float32_of_the_float_values() -> None:
    """base64 decodes to exactly the float encoding's numbers."""
    floats = _shapes.embeddings(["hello"], "emb", encoding_format="float")
    encoded = _shapes.embeddings(["hello"], "emb", encoding_format="base64")
    decoded = list(struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"])))
    assert decoded == floats["data"][0]["embedding"]


def test_embeddings_reject_unknown_encoding() -> None:
    """Only float and base64 exist."""
    with pytest.raises(ValueError, match="encoding_format"):
        _shapes.embeddings(["a"], "emb", encoding_format="int8")


def test_model_list_parses() -> None:
    """Each listed model validates as Model."""
    raw = _shapes.model_list(["a", "b"])
    assert [Model.model_validate(m).id for m in raw["data"]] == ["a", "b"]
    assert raw["object"] == "list"


def test_error_body_shape() -> None:
    """OpenAI's error envelope with all four fields."""
    body = _shapes.error_body(
        "nope", type="invalid_request_error", code="context_length_exceeded", param="messages"
    )
    assert body == {
        "error": {
            "message": "nope",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


# -- end to end through a real client, served by httpx2's MockTransport ------------------------


def serving(routes: dict[str, tuple[str, bytes]]) -> openai.OpenAI:
    """A real client whose transport answers each path with a fixed content type and body."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        content_type, body = routes[request.url.path]
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    http_client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(
        api_key="sk-test", base_url="http://fake.test/v1", max_retries=0, http_client=http_client
    )


def as_json(value: dict[str, Any]) -> tuple[str, bytes]:
    """A JSON route."""
    return "application/json", json.dumps(value).encode()


def test_client_parses_chat_completion_and_chunks() -> None:
    """The SDK reads the chat shapes as JSON and as a stream."""
    completion = _shapes.chat_completion("to be or not", "m")
    client = serving({"/v1/chat/completions": as_json(completion)})
    assert client.chat.completions.create(model="m", messages=[]).choices[0].message.content == "to be or not"
    body = _shapes.sse(_shapes.chat_chunks(completion, include_usage=True))
    client = serving({"/v1/chat/completions": ("text/event-stream", body)})
    chunks = list(client.chat.completions.create(model="m", messages=[], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "to be or not"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_client_parses_responses_and_their_stream() -> None:
    """The SDK reads a response, its raw event stream, and accumulates it with responses.stream()."""
    response = _shapes.response_object("streamed answer", "m")
    client = serving({"/v1/responses": as_json(response)})
    assert client.responses.create(model="m", input="q").output_text == "streamed answer"
    events = _shapes.response_events(response)
    body = _shapes.sse([data for _, data in events], done=False, event_names=[name for name, _ in events])
    client = serving({"/v1/responses": ("text/event-stream", body)})
    assert [e.type for e in client.responses.create(model="m", input="q", stream=True)] == [
        n for n, _ in events
    ]
    with client.responses.stream(model="m", input="q") as stream:
        assert stream.get_final_response().output_text == "streamed answer"


def test_client_decodes_base64_embeddings() -> None:
    """The SDK's default base64 request decodes to the float vectors."""
    expected = _shapes.embeddings(["hi"], "emb", encoding_format="float")["data"][0]["embedding"]
    client = serving({"/v1/embeddings": as_json(_shapes.embeddings(["hi"], "emb", encoding_format="base64"))})
    assert client.embeddings.create(model="emb", input="hi").data[0].embedding == expected
