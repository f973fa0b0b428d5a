"""Property: for any request shape and any fallback route, with the primary failing, the caller
gets an answer of the shape it asked for, or a documented error — never an answer that ignores
``response_format`` or ``tool_choice``, never a foreign exception."""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resilient_openai import (
    CannedToolCall,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    UnanswerableError,
)
from resilient_openai.testing import FakeClock, FakeUpstream, Status

from .conftest import Harness


class Person(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    name: str
    age: int


class Lookup(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    q: str


SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "person", "strict": True, "schema": Person.model_json_schema()},
}
TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": Lookup.model_json_schema()}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]
FUNCTIONS = {
    "text": lambda body, reason: "plain words",
    "json": lambda body, reason: '{"name": "fn", "age": 7}',
    "decline": lambda body, reason: None,
}

formats = st.sampled_from([None, {"type": "json_object"}, SCHEMA])
choices = st.sampled_from(
    [None, "none", "auto", "required", {"type": "function", "function": {"name": "lookup"}}]
)
steps = st.sampled_from(
    [
        FallbackStep(kind="model", model="gpt-B"),
        FallbackStep(kind="cache"),
        FallbackStep(kind="canned", text="busy ({reason})"),
        FallbackStep(kind="canned", json={"name": "canned", "age": 1}),
        FallbackStep(kind="canned", json={"name": "half"}),
        FallbackStep(kind="canned", tool_call=CannedToolCall(name="lookup", arguments={"q": "x"})),
        FallbackStep(kind="canned", tool_call=CannedToolCall(name="lookup", arguments={"q": 1})),
        FallbackStep(kind="function", function="text"),
        FallbackStep(kind="function", function="json"),
        FallbackStep(kind="function", function="decline"),
    ]
)


def _answer(
    harness: Harness, client: Any, request: dict[str, Any], stream: bool
) -> tuple[str | None, list[Any], str]:
    """(content, tool calls as (name, arguments), finish_reason) of a whole or streamed answer."""
    if not stream:
        choice = harness.run(lambda: client.chat.completions.create(**request)).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()]
        return choice.message.content, calls, choice.finish_reason
    _, chunks, error = harness.stream_chat(client, **request)
    if error is not None:
        raise error
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [
        (call.function.name, call.function.arguments)
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or ()
    ]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return content, calls, finish[-1]


@pytest.mark.parametrize("flavour", ["sync", "async"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    response_format=formats,
    with_tools=st.booleans(),
    tool_choice=choices,
    stream=st.booleans(),
    route=st.lists(steps, min_size=1, max_size=3),
)
def test_answer_has_the_requested_shape_or_is_our_error(
    flavour: str,
    response_format: dict[str, Any] | None,
    with_tools: bool,
    tool_choice: Any,
    stream: bool,
    route: list[FallbackStep],
) -> None:
    """Whatever the request shape and the route, the primary failing: the shape, or our error."""
    clock = FakeClock()
    upstream = FakeUpstream(clock=clock)
    upstream.set_default("gpt-A", Status(503))
    upstream.set_default("gpt-B", Status(503))
    harness = Harness(flavour, upstream, clock)
    policy = Policy(
        retry=RetryPolicy(rules={}), fallback=FallbackPolicy(routes={"gpt-A": Route(steps=tuple(route))})
    )
    client = harness.client(policy, runtime={"functions": FUNCTIONS})
    request: dict[str, Any] = {"model": "gpt-A", "messages": [{"role": "user", "content": "hi"}]}
    if response_format is not None:
        request["response_format"] = response_format
    if with_tools:
        request["tools"] = TOOLS
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    forced = with_tools and (tool_choice == "required" or isinstance(tool_choice, dict))
    try:
        content, calls, finish = _answer(harness, client, request, stream)
    except UnanswerableError as error:
        reason = error.reason
        event("unanswerable")
        assert reason
        return
    except openai.InternalServerError:
        # No local step at all: the primary's failure is the answer, untouched.
        assert all(step.kind in ("model", "cache") for step in route)
        event("the primary's failure")
        return
    event("answered")
    if forced:
        assert finish == "tool_calls"
        assert [name for name, _ in calls] == ["lookup"]
        Lookup.model_validate_json(calls[0][1])
        return
    assert not calls
    assert content is not None
    if response_format is SCHEMA:
        Person.model_validate_json(content)
    elif response_format is not None:
        assert isinstance(json.loads(content), dict)
