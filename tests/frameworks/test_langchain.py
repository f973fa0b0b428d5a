"""LangChain's ``ChatOpenAI`` on the resilient client: invoke, stream and structured output (function
calling and json_schema) against the fault-injecting fake upstream.

``ChatOpenAI`` takes four clients: ``client`` / ``async_client`` (the chat completions resources)
serve invoke and stream, ``root_client`` / ``root_async_client`` serve structured output
(``with_raw_response.parse``). Given only the first two, structured output fails inside LangChain.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from resilient_openai import Policy, provenance
from resilient_openai.testing import Cut, Ok, Status

from .conftest import (
    ADA,
    ADA_JSON,
    BACKUP,
    BOB,
    BOB_JSON,
    PRIMARY,
    Person,
    Rig,
    cache_step,
    canned_json_step,
    canned_step,
    canned_tool_call_step,
    model_step,
    resilience_error_in,
    tool_call_answer,
)


def chat_model(rig: Rig, policy: Policy, **kwargs: Any) -> ChatOpenAI:
    """``ChatOpenAI`` on a sync and an async resilient client, as the README shows."""
    sync, async_ = rig.sync_client(policy), rig.async_client(policy)
    return ChatOpenAI(
        model=PRIMARY,
        client=sync.chat.completions,
        async_client=async_.chat.completions,
        root_client=sync,
        root_async_client=async_,
        **kwargs,
    )


def test_invoke_answers_from_the_primary(rig: Rig) -> None:
    """A healthy primary: the caller gets its answer, and the call says it came from upstream."""
    rig.upstream.set_default(PRIMARY, Ok(text="hello there"))
    message = chat_model(rig, rig.policy(model_step())).invoke("hi")
    assert message.content == "hello there"
    assert message.response_metadata["model_name"] == PRIMARY
    assert rig.last_call.source == "upstream"
    assert rig.upstream.count() == 1


def test_invoke_falls_back_to_another_model(rig: Rig) -> None:
    """Primary 503: the fallback model answers, and LangChain reports that model."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text="from the backup"))
    message = chat_model(rig, rig.policy(model_step())).invoke("hi")
    assert message.content == "from the backup"
    assert message.response_metadata["model_name"] == BACKUP
    assert rig.last_call.source == "fallback_model"
    assert rig.last_call.answered_by == BACKUP


def test_invoke_gets_the_canned_text_in_an_outage(rig: Rig) -> None:
    """Primary down, a canned step: a plain invoke gets the canned text, marked canned."""
    rig.upstream.set_default(PRIMARY, Status(503))
    message = chat_model(rig, rig.policy(canned_step())).invoke("hi")
    assert message.content == "Sorry, gpt-A is unavailable (server_error)."
    assert rig.last_call.source == "canned"


def test_invoke_is_served_from_the_cache_in_an_outage(rig: Rig) -> None:
    """The same prompt while the primary is down: the answer LangChain got before, from the cache."""
    model = chat_model(rig, rig.policy(cache_step()))
    rig.upstream.set_default(PRIMARY, Ok(text="remembered"))
    assert model.invoke("hi").content == "remembered"
    rig.upstream.set_default(PRIMARY, Status(503))
    assert model.invoke("hi").content == "remembered"
    assert rig.last_call.source == "cache"


def test_stream_is_served_from_the_cache_in_an_outage(rig: Rig) -> None:
    """A streamed answer is cached; streamed again while the primary is down, it is replayed."""
    model = chat_model(rig, rig.policy(cache_step()))
    rig.upstream.set_default(PRIMARY, Ok(text="remembered words"))
    assert "".join(str(chunk.content) for chunk in model.stream("hi")) == "remembered words"
    rig.upstream.set_default(PRIMARY, Status(503))
    assert "".join(str(chunk.content) for chunk in model.stream("hi")) == "remembered words"
    assert rig.last_call.source == "cache"


def test_response_headers_say_where_the_answer_came_from(rig: Rig) -> None:
    """include_response_headers=True: the x-resilient-* headers reach response_metadata."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text="from the backup"))
    model = chat_model(rig, rig.policy(model_step()), include_response_headers=True)
    headers = model.invoke("hi").response_metadata["headers"]
    assert headers["x-resilient-source"] == "fallback_model"
    assert headers["x-resilient-model"] == BACKUP
    assert headers["x-resilient-reason"] == "server_error"


def test_stream_failing_before_its_first_token_falls_back(rig: Rig) -> None:
    """The primary's stream is cut before any token: the caller reads the backup's stream, whole."""
    rig.upstream.set_default(PRIMARY, Cut(0))
    rig.upstream.set_default(BACKUP, Ok(text="alpha beta gamma"))
    chunks = list(chat_model(rig, rig.policy(model_step())).stream("hi"))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert "".join(str(chunk.content) for chunk in chunks) == "alpha beta gamma"
    assert rig.last_call.source == "fallback_model"


async def test_async_stream_failing_before_its_first_token_falls_back(rig: Rig) -> None:
    """The same through ``astream``, on the async resilient client."""
    rig.upstream.set_default(PRIMARY, Cut(0))
    rig.upstream.set_default(BACKUP, Ok(text="alpha beta gamma"))
    model = chat_model(rig, rig.policy(model_step()))
    text = "".join([str(chunk.content) async for chunk in model.astream("hi")])
    assert text == "alpha beta gamma"
    assert rig.last_call.source == "fallback_model"


async def test_async_invoke_falls_back_to_another_model(rig: Rig) -> None:
    """``ainvoke`` goes through the async client: primary 503, the backup answers."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text="from the backup"))
    message = await chat_model(rig, rig.policy(model_step())).ainvoke("hi")
    assert isinstance(message, AIMessage)
    assert message.content == "from the backup"
    assert rig.last_call.source == "fallback_model"


def test_structured_output_json_schema(rig: Rig) -> None:
    """method="json_schema" (``root_client...with_raw_response.parse``): the caller gets a Person."""
    rig.upstream.set_default(PRIMARY, Ok(text=ADA_JSON))
    model = chat_model(rig, rig.policy(model_step()))
    structured = model.with_structured_output(Person, method="json_schema")
    assert structured.invoke("who?") == ADA
    [sent] = rig.upstream.requests
    assert sent.json is not None
    assert sent.json["response_format"]["type"] == "json_schema"
    assert rig.last_call.source == "upstream"


def test_structured_output_needs_the_root_clients(rig: Rig) -> None:
    """Given client and async_client alone, structured output fails inside LangChain: pass all four."""
    policy = rig.policy(model_step())
    sync, async_ = rig.sync_client(policy), rig.async_client(policy)
    model = ChatOpenAI(model=PRIMARY, client=sync.chat.completions, async_client=async_.chat.completions)
    with pytest.raises(AttributeError):
        model.with_structured_output(Person, method="json_schema").invoke("who?")
    assert rig.upstream.count() == 0


def test_structured_output_include_raw_carries_the_provenance_headers(rig: Rig) -> None:
    """include_raw=True keeps the AIMessage beside the Person: its headers say who answered."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text=BOB_JSON))
    model = chat_model(rig, rig.policy(model_step()), include_response_headers=True)
    out = model.with_structured_output(Person, method="json_schema", include_raw=True).invoke("who?")
    assert isinstance(out, dict)
    assert out["parsed"] == BOB
    assert out["raw"].response_metadata["headers"]["x-resilient-source"] == "fallback_model"


def test_structured_output_function_calling(rig: Rig) -> None:
    """method="function_calling": the tool call the primary makes becomes a Person."""
    rig.upstream.set_default(PRIMARY, tool_call_answer("Person", ADA.model_dump()))
    model = chat_model(rig, rig.policy(model_step()))
    structured = model.with_structured_output(Person, method="function_calling")
    assert structured.invoke("who?") == ADA
    [sent] = rig.upstream.requests
    assert sent.json is not None
    assert sent.json["tool_choice"]["function"]["name"] == "Person"


def test_structured_output_json_schema_from_the_fallback_model_in_an_outage(rig: Rig) -> None:
    """Primary down: the fallback model is asked the same structured request, and its Person arrives."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text=BOB_JSON))
    model = chat_model(rig, rig.policy(model_step()))
    structured = model.with_structured_output(Person, method="json_schema")
    assert structured.invoke("who?") == BOB
    assert rig.last_call.source == "fallback_model"
    backup = [r for r in rig.upstream.requests if r.model == BACKUP]
    assert backup[0].json is not None
    assert backup[0].json["response_format"]["type"] == "json_schema"


def test_structured_output_function_calling_from_the_fallback_model_in_an_outage(rig: Rig) -> None:
    """Primary down: the fallback model answers the forced tool call, and its Person arrives."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, tool_call_answer("Person", BOB.model_dump(), model=BACKUP))
    model = chat_model(rig, rig.policy(model_step()))
    assert model.with_structured_output(Person, method="function_calling").invoke("who?") == BOB
    assert rig.last_call.source == "fallback_model"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_with_only_canned_text_is_our_documented_error(rig: Rig, method: str) -> None:
    """Primary down and only canned text: our error with provenance, never None or a parser's error."""
    rig.upstream.set_default(PRIMARY, Status(503))
    model = chat_model(rig, rig.policy(canned_step()))
    structured = model.with_structured_output(Person, method=method)  # type: ignore[arg-type]
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which error is what the test checks
        structured.invoke("who?")
    error = resilience_error_in(caught.value)
    assert error is not None, f"got {type(caught.value).__name__}: {caught.value}"
    record = provenance(error)
    assert record is not None
    assert record.reason is not None
    assert rig.upstream.count(model=PRIMARY) == 1


def test_structured_output_json_schema_from_canned_json_in_an_outage(rig: Rig) -> None:
    """Primary down, a canned JSON value valid for the schema: the caller gets it as a Person."""
    rig.upstream.set_default(PRIMARY, Status(503))
    model = chat_model(rig, rig.policy(canned_json_step(BOB.model_dump())))
    assert model.with_structured_output(Person, method="json_schema").invoke("who?") == BOB
    assert rig.last_call.source == "canned"


def test_structured_output_function_calling_from_a_canned_tool_call_in_an_outage(rig: Rig) -> None:
    """Primary down, a canned call of the forced function: the caller gets its arguments as a Person."""
    rig.upstream.set_default(PRIMARY, Status(503))
    model = chat_model(rig, rig.policy(canned_tool_call_step("Person", BOB.model_dump())))
    assert model.with_structured_output(Person, method="function_calling").invoke("who?") == BOB
    assert rig.last_call.source == "canned"
