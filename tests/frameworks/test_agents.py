"""The OpenAI Agents SDK on the resilient client, through both of its OpenAI models:
``OpenAIChatCompletionsModel`` and ``OpenAIResponsesModel``, each taking an ``AsyncOpenAI``.

Tracing is off in every run (``RunConfig(tracing_disabled=True)``): its exporter would otherwise
post to the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from agents import Agent, Model, OpenAIChatCompletionsModel, OpenAIResponsesModel, RunConfig, Runner

from resilient_openai import provenance
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
    model_step,
    resilience_error_in,
)

RUN = RunConfig(tracing_disabled=True)

MODELS: dict[str, Callable[[openai.AsyncOpenAI], Model]] = {
    "chat": lambda client: OpenAIChatCompletionsModel(model=PRIMARY, openai_client=client),
    "responses": lambda client: OpenAIResponsesModel(model=PRIMARY, openai_client=client),
}


@pytest.fixture(params=sorted(MODELS))
def flavour(request: pytest.FixtureRequest) -> str:
    """Which of the SDK's OpenAI models the agent runs on."""
    name: str = request.param
    return name


def agent(rig: Rig, flavour: str, *steps: Any, output_type: type[Any] | None = None) -> Agent[Any]:
    client = rig.async_client(rig.policy(*steps))
    return Agent(name="assistant", model=MODELS[flavour](client), output_type=output_type)


async def test_run_answers_from_the_primary(rig: Rig, flavour: str) -> None:
    """A healthy primary: the run's final output is its answer, from upstream."""
    rig.upstream.set_default(PRIMARY, Ok(text="hello there"))
    result = await Runner.run(agent(rig, flavour, model_step()), "hi", run_config=RUN)
    assert result.final_output == "hello there"
    assert rig.last_call.source == "upstream"
    assert rig.upstream.count() == 1


async def test_run_falls_back_to_another_model(rig: Rig, flavour: str) -> None:
    """Primary 503: the run's final output is the backup's answer."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text="from the backup"))
    result = await Runner.run(agent(rig, flavour, model_step()), "hi", run_config=RUN)
    assert result.final_output == "from the backup"
    assert rig.last_call.source == "fallback_model"
    assert rig.last_call.answered_by == BACKUP


async def test_run_gets_the_canned_text_in_an_outage(rig: Rig, flavour: str) -> None:
    """Primary down, a canned step: the run ends with the canned text, marked canned."""
    rig.upstream.set_default(PRIMARY, Status(503))
    result = await Runner.run(agent(rig, flavour, canned_step()), "hi", run_config=RUN)
    assert result.final_output == "Sorry, gpt-A is unavailable (server_error)."
    assert rig.last_call.source == "canned"


async def test_run_is_served_from_the_cache_in_an_outage(rig: Rig, flavour: str) -> None:
    """The same run while the primary is down: the answer it got before, from the cache."""
    assistant = agent(rig, flavour, cache_step())
    rig.upstream.set_default(PRIMARY, Ok(text="remembered"))
    assert (await Runner.run(assistant, "hi", run_config=RUN)).final_output == "remembered"
    rig.upstream.set_default(PRIMARY, Status(503))
    assert (await Runner.run(assistant, "hi", run_config=RUN)).final_output == "remembered"
    assert rig.last_call.source == "cache"


async def test_streamed_run_failing_before_its_first_token_falls_back(rig: Rig, flavour: str) -> None:
    """Runner.run_streamed, the primary's stream cut before any token: the backup's text, whole."""
    rig.upstream.set_default(PRIMARY, Cut(0))
    rig.upstream.set_default(BACKUP, Ok(text="alpha beta gamma"))
    result = Runner.run_streamed(agent(rig, flavour, model_step()), "hi", run_config=RUN)
    deltas = [
        event.data.delta
        async for event in result.stream_events()
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"
    ]
    assert "".join(deltas) == "alpha beta gamma"
    assert result.final_output == "alpha beta gamma"
    assert rig.last_call.source == "fallback_model"


async def test_structured_output_from_the_primary(rig: Rig, flavour: str) -> None:
    """output_type=Person: the schema goes upstream, and the run's final output is a Person."""
    rig.upstream.set_default(PRIMARY, Ok(text=ADA_JSON))
    result = await Runner.run(agent(rig, flavour, model_step(), output_type=Person), "who?", run_config=RUN)
    assert result.final_output == ADA
    [sent] = rig.upstream.requests
    assert sent.json is not None
    schema_format = sent.json["response_format"] if flavour == "chat" else sent.json["text"]["format"]
    assert schema_format["type"] == "json_schema"


async def test_structured_output_from_the_fallback_model_in_an_outage(rig: Rig, flavour: str) -> None:
    """Primary down: the backup is asked for the same schema, and its Person is the final output."""
    rig.upstream.set_default(PRIMARY, Status(503))
    rig.upstream.set_default(BACKUP, Ok(text=BOB_JSON))
    result = await Runner.run(agent(rig, flavour, model_step(), output_type=Person), "who?", run_config=RUN)
    assert result.final_output == BOB
    assert rig.last_call.source == "fallback_model"


async def test_structured_output_with_only_canned_text_is_our_documented_error(
    rig: Rig, flavour: str
) -> None:
    """Primary down and only canned text: our error with provenance, not ModelBehaviorError."""
    rig.upstream.set_default(PRIMARY, Status(503))
    assistant = agent(rig, flavour, canned_step(), output_type=Person)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which error is what the test checks
        await Runner.run(assistant, "who?", run_config=RUN)
    error = resilience_error_in(caught.value)
    assert error is not None, f"got {type(caught.value).__name__}: {caught.value}"
    record = provenance(error)
    assert record is not None
    assert record.reason is not None


async def test_structured_output_from_canned_json_in_an_outage(rig: Rig, flavour: str) -> None:
    """Primary down, a canned JSON value valid for the schema: the final output is that Person."""
    rig.upstream.set_default(PRIMARY, Status(503))
    assistant = agent(rig, flavour, canned_json_step(BOB.model_dump()), output_type=Person)
    result = await Runner.run(assistant, "who?", run_config=RUN)
    assert result.final_output == BOB
    assert rig.last_call.source == "canned"
