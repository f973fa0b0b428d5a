"""A rig for running frameworks on the resilient client: the fake upstream, the fake clock, the
per-call events, and the answers the frameworks expect (JSON text, a tool call).

Everything goes to the in-process fake upstream; a guard turns any real connection into an error,
so a framework that reaches for the network (tracing, telemetry, a default client) fails loudly.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel

from resilient_openai import (
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    ResilienceError,
    RetryPolicy,
    Route,
    resilient,
)
from resilient_openai.observe.events import CallCompleted, Event
from resilient_openai.testing import FakeClock, FakeUpstream, Garbage

from ..conftest import API_KEY, BASE_URL

PRIMARY = "gpt-A"
BACKUP = "gpt-B"


class Person(BaseModel):
    """The structured output every framework is asked for."""

    name: str
    age: int


ADA = Person(name="Ada", age=36)
ADA_JSON = ADA.model_dump_json()
BOB = Person(name="Bob", age=3)
BOB_JSON = BOB.model_dump_json()


def model_step(model: str = BACKUP) -> FallbackStep:
    return FallbackStep(kind="model", model=model)


def cache_step() -> FallbackStep:
    return FallbackStep(kind="cache")


def canned_step(text: str = "Sorry, {model} is unavailable ({reason}).") -> FallbackStep:
    return FallbackStep(kind="canned", text=text)


def canned_json_step(value: dict[str, Any]) -> FallbackStep:
    """A canned step that also holds a JSON value for structured requests.

    Built from data, so that until the library knows the ``json`` key, the test that uses it fails
    where it should (here) and is reported as an expected failure.
    """
    return FallbackStep.model_validate({"kind": "canned", "text": "Sorry.", "json": value})


def canned_tool_call_step(name: str, arguments: dict[str, Any]) -> FallbackStep:
    """A canned step that also holds a tool call, for requests that force one (built from data too)."""
    value = {"name": name, "arguments": arguments}
    return FallbackStep.model_validate({"kind": "canned", "text": "Sorry.", "tool_call": value})


def tool_call_answer(name: str, arguments: dict[str, Any], model: str = PRIMARY) -> Garbage:
    """A 200 chat completion whose answer is one call of tool ``name`` (non-streaming requests only).

    ``Ok`` answers with text; ``Garbage`` sends any body as is, here a valid chat completion.
    """
    return Garbage(
        {
            "id": "chatcmpl-tool",
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": name, "arguments": json.dumps(arguments)},
                            }
                        ],
                    },
                    "logprobs": None,
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        }
    )


def resilience_error_in(exc: BaseException) -> ResilienceError | None:
    """Our documented error, raised as is or wrapped (as cause or context) by a framework."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ResilienceError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@dataclass
class Rig:
    """The fake upstream and clock, and the events every resilient client built here reports."""

    upstream: FakeUpstream
    clock: FakeClock
    events: list[Event] = field(default_factory=list)

    def policy(self, *steps: FallbackStep) -> Policy:
        """A policy whose primary route falls back along ``steps``; no retries, the breaker opens at once."""
        return Policy(
            retry=RetryPolicy(rules={}),
            breaker=BreakerPolicy(fail_max=1, break_duration=60),
            fallback=FallbackPolicy(routes={PRIMARY: Route(steps=steps)}),
        )

    def sync_client(self, policy: Policy) -> openai.OpenAI:
        raw = openai.OpenAI(
            api_key=API_KEY, base_url=BASE_URL, http_client=httpx2.Client(transport=self.upstream.transport())
        )
        return resilient(raw, policy, clock=self.clock, listeners=[self.events.append])

    def async_client(self, policy: Policy) -> openai.AsyncOpenAI:
        raw = openai.AsyncOpenAI(
            api_key=API_KEY,
            base_url=BASE_URL,
            http_client=httpx2.AsyncClient(transport=self.upstream.async_transport()),
        )
        return resilient(raw, policy, clock=self.clock, listeners=[self.events.append])

    @property
    def calls(self) -> list[CallCompleted]:
        """Every call that went through a resilient client, in order."""
        return [event for event in self.events if isinstance(event, CallCompleted)]

    @property
    def last_call(self) -> CallCompleted:
        """The last call through a resilient client: where its answer came from."""
        return self.calls[-1]


@pytest.fixture
def rig(upstream: FakeUpstream, clock: FakeClock) -> Rig:
    return Rig(upstream, clock)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any real connection attempt fails the test: everything must reach the in-process fake."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise RuntimeError(f"a framework tried to reach the network: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
