"""Stream assemblers: partial text of a cut stream, and the non-streamed answer of a whole one."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall
from openai.types.responses import Response

from resilient_openai._fallback.assemble import (
    ChatStreamAssembler,
    EventCounter,
    ResponsesStreamAssembler,
    assembler_for,
)

USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def _chunk(*choices: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` as the API sends it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_767_225_600,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "choices": list(choices),
        "usage": usage,
    }


def _delta(index: int = 0, finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _text_stream(*pieces: str) -> list[dict[str, Any]]:
    """A complete text answer: role chunk, content chunks, finish chunk, usage chunk."""
    return [
        _chunk(_delta(role="assistant", content="", refusal=None)),
        *(_chunk(_delta(content=piece)) for piece in pieces),
        _chunk(_delta(finish_reason="stop")),
        _chunk(usage=USAGE),
    ]


def _tool_stream() -> list[dict[str, Any]]:
    """Two parallel tool calls whose arguments arrive in fragments, interleaved."""

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return _delta(tool_calls=[{"index": index, **fields}])

    return [
        _chunk(_delta(role="assistant", content=None)),
        _chunk(call(0, id="call_a", type="function", function={"name": "weather", "arguments": ""})),
        _chunk(call(0, function={"arguments": '{"city":'})),
        _chunk(call(1, id="call_b", type="function", function={"name": "time", "arguments": ""})),
        _chunk(call(0, function={"arguments": '"Oslo"}'})),
        _chunk(call(1, function={"arguments": '{"tz":"CET"}'})),
        _chunk(_delta(finish_reason="tool_calls")),
    ]


def _fed(events: list[dict[str, Any]]) -> ChatStreamAssembler:
    assembler = ChatStreamAssembler()
    for event in events:
        assembler.feed(event)
    return assembler


def test_chat_text_accumulates_as_chunks_arrive() -> None:
    """``text`` is choice 0's content so far, before the stream ends."""
    assembler = _fed(_text_stream("Hel", "lo", "!")[:3])
    assert (assembler.text, assembler.chunks, assembler.finished) == ("Hello", 2, False)


def test_chat_role_and_usage_chunks_are_not_content() -> None:
    """Only chunks carrying part of the answer are counted."""
    assert _fed(_text_stream("a", "b")).chunks == 2


def test_chat_finishes_on_a_finish_reason() -> None:
    """``finished`` turns on with the first finish_reason of the only choice."""
    assert _fed(_text_stream("Hi")[:3]).finished is True


def test_chat_usage_comes_from_the_usage_chunk() -> None:
    """The trailing usage chunk (empty choices) fills ``usage``."""
    assert _fed(_text_stream("Hi")).usage == USAGE


def test_chat_model_is_read_from_the_chunks() -> None:
    """``model`` is the model the chunks name."""
    assert _fed(_text_stream("Hi")[:1]).model == "gpt-4o-mini-2024-07-18"


def test_chat_completion_validates_and_round_trips_text() -> None:
    """The rebuilt answer is a valid ChatCompletion with the same text, usage and metadata."""
    completion = ChatCompletion.model_validate(_fed(_text_stream("Hel", "lo")).completion())
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].message.refusal is None
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 12
    assert (completion.id, completion.created, completion.system_fingerprint) == (
        "chatcmpl-1",
        1_767_225_600,
        "fp_1",
    )


def test_chat_completion_without_usage_has_none() -> None:
    """A stream without a usage chunk rebuilds an answer without ``usage``."""
    completion = _fed(_text_stream("Hi")[:-1]).completion()
    assert "usage" not in completion
    assert ChatCompletion.model_validate(completion).usage is None


def test_chat_tool_calls_are_assembled_by_index() -> None:
    """Tool-call fragments join by index into whole calls, in index order."""
    completion = ChatCompletion.model_validate(_fed(_tool_stream()).completion())
    calls = [
        c
        for c in completion.choices[0].message.tool_calls or []
        if isinstance(c, ChatCompletionMessageFunctionToolCall)
    ]
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "weather", '{"city":"Oslo"}'),
        ("call_b", "time", '{"tz":"CET"}'),
    ]
    assert completion.choices[0].message.content is None
    assert completion.choices[0].finish_reason == "tool_calls"


def test_chat_choices_are_kept_apart_by_index() -> None:
    """With n > 1, each choice gets its own text and finish_reason; ``text`` follows choice 0."""
    assembler = _fed(
        [
            _chunk(_delta(0, role="assistant", content="A"), _delta(1, role="assistant", content="B")),
            _chunk(_delta(1, content="b", finish_reason="stop")),
            _chunk(_delta(0, content="a", finish_reason="length")),
        ]
    )
    completion = ChatCompletion.model_validate(assembler.completion())
    assert assembler.text == "Aa"
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "Aa", "length"),
        (1, "Bb", "stop"),
    ]


def test_chat_is_unfinished_while_any_choice_runs() -> None:
    """With n > 1, one finished choice does not finish the stream."""
    assembler = _fed([_chunk(_delta(0, content="A", finish_reason="stop"), _delta(1, content="B"))])
    assert assembler.finished is False


def test_chat_refusal_is_assembled() -> None:
    """Refusal deltas rebuild ``message.refusal``."""
    events = [
        _chunk(_delta(role="assistant", refusal="I can't")),
        _chunk(_delta(refusal=" help.", finish_reason="stop")),
    ]
    message = ChatCompletion.model_validate(_fed(events).completion()).choices[0].message
    assert (message.refusal, message.content) == ("I can't help.", None)


def test_chat_completion_of_a_cut_stream_is_refused() -> None:
    """An unfinished stream has no complete answer to cache."""
    with pytest.raises(ValueError, match="not finished"):
        _fed(_text_stream("Hi")[:2]).completion()


def _response(status: str, text: str = "") -> dict[str, Any]:
    """A Responses API ``response`` object."""
    output = [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_767_225_600,
        "model": "gpt-4.1-mini",
        "status": status,
        "output": output if text else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 7,
        }
        if status != "in_progress"
        else None,
    }


def _text_delta(delta: str) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": delta,
        "logprobs": [],
        "sequence_number": 3,
    }


def _responses(*events: dict[str, Any]) -> ResponsesStreamAssembler:
    assembler = ResponsesStreamAssembler()
    assembler.feed({"type": "response.created", "response": _response("in_progress"), "sequence_number": 0})
    for event in events:
        assembler.feed(event)
    return assembler


def test_responses_text_comes_from_output_text_deltas() -> None:
    """``text`` joins the output_text deltas; reasoning deltas are neither text nor chunks."""
    assembler = _responses(
        {"type": "response.reasoning_summary_text.delta", "delta": "thinking", "sequence_number": 1},
        _text_delta("Hel"),
        _text_delta("lo"),
    )
    assert (assembler.text, assembler.chunks, assembler.finished) == ("Hello", 2, False)
    assert assembler.model == "gpt-4.1-mini"


@pytest.mark.parametrize("outcome", ["completed", "incomplete", "failed"])
def test_responses_finish_on_each_terminal_event(outcome: str) -> None:
    """Each terminal event finishes the stream and says how."""
    event = {"type": f"response.{outcome}", "response": _response(outcome, "Hi"), "sequence_number": 9}
    assembler = _responses(_text_delta("Hi"), event)
    assert (assembler.finished, assembler.outcome) == (True, outcome)


def test_responses_completion_is_the_final_response() -> None:
    """``completion`` is the response carried by ``response.completed``, with its usage."""
    final = _response("completed", "Hello")
    assembler = _responses(
        _text_delta("Hello"), {"type": "response.completed", "response": final, "sequence_number": 9}
    )
    response = Response.model_validate(assembler.completion())
    assert response.output_text == "Hello"
    assert assembler.usage == final["usage"]


def test_responses_usage_waits_for_the_end() -> None:
    """Before a terminal event there is no usage and no completion."""
    assembler = _responses(_text_delta("Hi"))
    assert assembler.usage is None
    with pytest.raises(ValueError, match="not finished"):
        assembler.completion()


def test_generic_assembler_only_counts() -> None:
    """Unknown operations get a counter: events counted, no text, never finished."""
    assembler = assembler_for("audio.speech")
    assembler.feed({"type": "speech.audio.delta"})
    assembler.feed({"type": "speech.audio.done"})
    assert isinstance(assembler, EventCounter)
    assert (assembler.chunks, assembler.text, assembler.finished, assembler.usage) == (2, "", False, None)


@pytest.mark.parametrize(
    ("operation", "kind"),
    [("chat.completions", ChatStreamAssembler), ("responses", ResponsesStreamAssembler)],
)
def test_the_factory_picks_the_assembler(operation: str, kind: type) -> None:
    """``assembler_for`` maps each known operation to its assembler."""
    assert isinstance(assembler_for(operation), kind)
