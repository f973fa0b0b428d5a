"""The request's shape and whether a fallback step can answer it: pure tables."""

from __future__ import annotations

from typing import Any

import pytest

from resilient_openai import CannedToolCall, FallbackStep
from resilient_openai._fallback.shape import (
    PLAIN,
    Reply,
    Shape,
    canned_reply,
    misfit,
    refusal,
    schema_problem,
    shape_of,
)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
                "additionalProperties": False,
            },
        },
    }
]


def _chat(**body: Any) -> Shape:
    return shape_of("chat.completions", {"model": "m", "messages": [], **body})


def test_plain_request_has_the_plain_shape() -> None:
    """A request with no format and no forced tool takes any text."""
    assert _chat() == Shape("chat.completions")
    assert _chat(tools=TOOLS, tool_choice="auto") == Shape("chat.completions")
    assert shape_of("embeddings", {"input": "x"}) == PLAIN


def test_chat_json_schema_is_read() -> None:
    """``response_format`` json_schema gives the schema the answer must satisfy."""
    shape = _chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert shape.json
    assert shape.schema == PERSON


def test_responses_text_format_is_read() -> None:
    """``text.format`` of the Responses API is read like ``response_format``."""
    body = {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": PERSON}}}
    shape = shape_of("responses", body)
    assert shape.json
    assert shape.schema == PERSON


def test_forced_and_named_tool_calls_are_read() -> None:
    """``tool_choice="required"`` forces some tool; a named function forces that one."""
    assert _chat(tools=TOOLS, tool_choice="required").tool
    named = _chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "lookup"}})
    assert named.tool
    assert named.tool_name == "lookup"
    assert "lookup" in named.tools


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"name": "a", "age": 3}, True),
        ({"name": "a"}, False),
        ({"name": "a", "age": "3"}, False),
        ({"name": "a", "age": 3, "extra": 1}, False),
        ({"name": "a", "age": True}, False),
        ({"name": "a", "age": 3.0}, True),
        (["a"], False),
    ],
)
def test_schema_check(value: Any, ok: bool) -> None:
    """The strict-schema subset: type, properties, required, additionalProperties."""
    assert (schema_problem(value, PERSON) is None) is ok


def test_schema_check_follows_refs_enums_items_and_any_of() -> None:
    """``$ref`` to ``$defs``, ``enum``, ``items`` and ``anyOf`` are checked."""
    schema = {
        "type": "object",
        "properties": {
            "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
            "mood": {"anyOf": [{"type": "string", "enum": ["up", "down"]}, {"type": "null"}]},
        },
        "required": ["pets", "mood"],
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}}},
    }
    assert schema_problem({"pets": [{"kind": "cat"}], "mood": None}, schema) is None
    assert schema_problem({"pets": [{"kind": "cow"}], "mood": "up"}, schema) is not None
    assert schema_problem({"pets": [], "mood": "sideways"}, schema) is not None


def test_canned_text_answers_plain_requests_only() -> None:
    """A canned text answers plain requests; structured ones and forced tool calls are refused."""
    step = FallbackStep(kind="canned", text="busy")
    assert canned_reply(step, PLAIN) == Reply("busy", template=True)
    assert refusal(step, _chat(response_format={"type": "json_object"})) is not None
    assert refusal(step, _chat(tools=TOOLS, tool_choice="required")) is not None


def test_canned_json_answers_when_it_fits_the_schema() -> None:
    """A canned JSON value answers a structured request only when valid for its schema."""
    schema = _chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    fits = FallbackStep(kind="canned", json={"name": "a", "age": 1})
    wrong = FallbackStep(kind="canned", json={"name": "a"})
    assert canned_reply(fits, schema) == Reply('{"name":"a","age":1}')
    assert "required 'age'" in str(refusal(wrong, schema))
    assert refusal(wrong, _chat(response_format={"type": "json_object"})) is None


def test_canned_tool_call_answers_forced_tool_calls_it_fits() -> None:
    """A canned tool call answers a forced call to an offered function with fitting arguments."""
    step = FallbackStep(kind="canned", tool_call=CannedToolCall(name="lookup", arguments={"q": "x"}))
    required = _chat(tools=TOOLS, tool_choice="required")
    assert canned_reply(step, required) == Reply(tool_call=("lookup", '{"q":"x"}'))
    other = _chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "other"}})
    assert refusal(step, other) is not None
    bad = FallbackStep(kind="canned", tool_call=CannedToolCall(name="lookup", arguments={"q": 1}))
    assert refusal(bad, required) is not None
    assert refusal(step, _chat(tool_choice="required")) is not None  # the request offers no such tool
    assert refusal(step, PLAIN) is not None


def test_live_steps_and_the_cache_are_never_refused() -> None:
    """Model and target steps are asked the same request; the cache holds the identical one."""
    shape = _chat(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})
    for step in (
        FallbackStep(kind="model", model="m2"),
        FallbackStep(kind="target", target="t"),
        FallbackStep(kind="cache"),
    ):
        assert refusal(step, shape) is None


def test_function_text_must_fit_a_structured_request() -> None:
    """A function cannot force a tool call, and its text must be JSON fitting the schema."""
    assert refusal(FallbackStep(kind="function", function="f"), _chat(tools=TOOLS, tool_choice="required"))
    schema = _chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert misfit(schema, '{"name": "a", "age": 2}') is None
    assert misfit(schema, "sorry") is not None
    assert misfit(_chat(response_format={"type": "json_object"}), "[1]") is not None
    assert misfit(PLAIN, "sorry") is None
