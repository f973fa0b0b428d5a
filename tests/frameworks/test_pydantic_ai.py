"""pydantic-ai on the resilient client: ``OpenAIChatModel`` (and ``OpenAIResponsesModel``) through
``OpenAIProvider(openai_client=...)``; run, run_stream and structured output.

pydantic-ai's default structured output is a tool the model must call (``ToolOutput``);
``NativeOutput`` asks for a json_schema response format instead.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from resilient_openai import provenance
from resilient_openai.testing import Cut, Ok, Status

from .conftest import (
    ADA,
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


def chat_model(rig: Rig, *steps: Any) -> OpenAIChatModel:
    client = rig.async_client(rig.policy(*steps))
    return OpenAIChatModel(PRIMARY, provider=OpenAIProvider(openai_client=client))


def responses_model(rig: Rig, *steps: Any) -> OpenAIResponsesModel:
    client = rig.async_client(rig.policy(*steps))
    return OpenAIResponsesModel(PRIMARY, provider=OpenAIProvider(openai_client=client))


async def test_run_answers_from_the_primary(rig: Rig) -> None:
    """A healthy primary: the run's output is its answer, from upstream."""
    rig.upstream.set_default(PRIMARY, Ok(text="hello there"))
    result = await Agent(chat_model(rig, model_step())).run("hi")
    assert result.output == "hello there"
    assert rig.last_call.source == "upstream"
    assert rig.upstream.count() == 1


async def test_run_falls_back_to_another_model(rig: Rig) -> None:
    """Primary 503: the backup answers, and pydantic-ai's response names the backup model."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text="from the backup"))
    result = await Agent(chat_model(rig, model_step())).run("hi")
    assert result.output == "from the backup"
    response = result.all_messages()[-1]
    assert isinstance(response, ModelResponse)
    assert response.model_name == BACKUP
    assert rig.last_call.source == "fallback_model"


async def test_responses_model_run_falls_back_to_another_model(rig: Rig) -> None:
    """The same on OpenAIResponsesModel: primary 503, the backup answers."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text="from the backup"))
    result = await Agent(responses_model(rig, model_step())).run("hi")
    assert result.output == "from the backup"
    assert rig.last_call.source == "fallback_model"


async def test_run_gets_the_canned_text_in_an_outage(rig: Rig) -> None:
    """Primary down, a canned step: the run's output is the canned text, marked canned."""
    rig.upstream.set_default(PRIMARY, Status(503))
    result = await Agent(chat_model(rig, canned_step())).run("hi")
    assert result.output == "Sorry, gpt-A is unavailable (server_error)."
    assert rig.last_call.source == "canned"


async def test_run_is_served_from_the_cache_in_an_outage(rig: Rig) -> None:
    """The same run while the primary is down: the answer it got before, from the cache."""
    agent = Agent(chat_model(rig, cache_step()))
    rig.upstream.set_default(PRIMARY, Ok(text="remembered"))
    assert (await agent.run("hi")).output == "remembered"
    rig.upstream.set_default(PRIMARY, Status(503))
    assert (await agent.run("hi")).output == "remembered"
    assert rig.last_call.source == "cache"


async def test_run_stream_failing_before_its_first_token_falls_back(rig: Rig) -> None:
    """run_stream, the primary's stream cut before any token: the backup's text, whole."""
    rig.upstream.set_default(PRIMARY, Cut(0))
    rig.upstream.set_default(BACKUP, Ok(text="alpha beta gamma"))
    async with Agent(chat_model(rig, model_step())).run_stream("hi") as run:
        deltas = [delta async for delta in run.stream_text(delta=True)]
    assert "".join(deltas) == "alpha beta gamma"
    assert rig.last_call.source == "fallback_model"


async def test_structured_tool_output_from_the_primary(rig: Rig) -> None:
    """output_type=Person (a tool the model must call): the primary's tool call becomes a Person."""
    rig.upstream.set_default(PRIMARY, tool_call_answer("final_result", ADA.model_dump()))
    result = await Agent(chat_model(rig, model_step()), output_type=Person).run("who?")
    assert result.output == ADA
    [sent] = rig.upstream.requests
    assert sent.json is not None
    assert [tool["function"]["name"] for tool in sent.json["tools"]] == ["final_result"]
    assert rig.last_call.source == "upstream"


async def test_structured_tool_output_from_the_fallback_model_in_an_outage(rig: Rig) -> None:
    """Primary down: the backup gets the same tools, and its tool call becomes the Person."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, tool_call_answer("final_result", BOB.model_dump(), model=BACKUP))
    result = await Agent(chat_model(rig, model_step()), output_type=Person).run("who?")
    assert result.output == BOB
    assert rig.last_call.source == "fallback_model"


async def test_native_structured_output_from_the_fallback_model_in_an_outage(rig: Rig) -> None:
    """NativeOutput (json_schema), primary down: the backup is asked for the schema and answers it."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text=BOB_JSON))
    result = await Agent(chat_model(rig, model_step()), output_type=NativeOutput(Person)).run("who?")
    assert result.output == BOB
    backup = [r for r in rig.upstream.requests if r.model == BACKUP]
    assert backup[0].json is not None
    assert backup[0].json["response_format"]["type"] == "json_schema"
    assert rig.last_call.source == "fallback_model"


@pytest.mark.parametrize("native", [False, True], ids=["tool", "native"])
async def test_structured_output_with_only_canned_text_is_our_documented_error(
    rig: Rig, native: bool
) -> None:
    """Primary down and only canned text: our error at once, not re-asks hiding the outage."""
    rig.upstream.set_default(PRIMARY, Status(503))
    output_type: Any = NativeOutput(Person) if native else Person
    agent = Agent(chat_model(rig, canned_step()), output_type=output_type)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which error is what the test checks
        await agent.run("who?")
    error = resilience_error_in(caught.value)
    assert error is not None, f"got {type(caught.value).__name__}: {caught.value}"
    record = provenance(error)
    assert record is not None
    assert record.reason is not None
    assert len(rig.calls) == 1  # one call, no re-ask


async def test_native_structured_output_from_canned_json_in_an_outage(rig: Rig) -> None:
    """Primary down, a canned JSON value valid for the schema: the run's output is that Person."""
    rig.upstream.set_default(PRIMARY, Status(503))
    agent = Agent(chat_model(rig, canned_json_step(BOB.model_dump())), output_type=NativeOutput(Person))
    result = await agent.run("who?")
    assert result.output == BOB
    assert rig.last_call.source == "canned"


async def test_structured_tool_output_from_a_canned_tool_call_in_an_outage(rig: Rig) -> None:
    """Primary down, a canned call of pydantic-ai's output tool: the run's output is that Person."""
    rig.upstream.set_default(PRIMARY, Status(503))
    agent = Agent(
        chat_model(rig, canned_tool_call_step("final_result", BOB.model_dump())), output_type=Person
    )
    result = await agent.run("who?")
    assert result.output == BOB
    assert rig.last_call.source == "canned"
