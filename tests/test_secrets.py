"""A sentinel API key never shows up in logs, errors, events, metrics or the health snapshot."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from resilient_openai import (
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    Route,
    Target,
    health,
    provenance,
    resilient,
)
from resilient_openai.observe.events import Event
from resilient_openai.observe.logging import LoggingListener
from resilient_openai.observe.prometheus import PrometheusListener
from resilient_openai.observe.redact import install_redaction
from resilient_openai.testing import FakeClock, FakeUpstream, Status

SENTINEL = "sk-proj-SENTINEL0123456789abcdefSECRET"
OTHER = "sk-SENTINEL-OTHER-0123456789abcdef"


@pytest.fixture
def redaction() -> Iterator[None]:
    """Redaction installed for the test, removed after."""
    undo = install_redaction()
    yield
    undo()


def test_sentinel_key_is_nowhere(redaction: None, caplog: pytest.LogCaptureFixture) -> None:
    """A failing call (retries, breaker, fallback, final error) leaks the key nowhere."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    upstream = FakeUpstream(clock=clock)
    upstream.set_default("gpt-A", Status(503))
    other = FakeUpstream(clock=clock)
    other.set_default("*", Status(500))
    events: list[Event] = []
    registry = CollectorRegistry()
    target_client = openai.OpenAI(
        api_key=OTHER, base_url="http://other.test/v1", http_client=httpx2.Client(transport=other.transport())
    )
    fallback = FallbackPolicy(
        routes={
            "gpt-A": Route(steps=(FallbackStep(kind="target", target="backup"), FallbackStep(kind="cache")))
        },
        targets={"backup": Target(name="backup")},
    )
    policy = Policy(breaker=BreakerPolicy(fail_max=2), fallback=fallback)
    raw = openai.OpenAI(
        api_key=SENTINEL,
        base_url="http://fake.test/v1",
        http_client=httpx2.Client(transport=upstream.transport()),
    )
    client = resilient(
        raw, policy, clock=clock, clients={"backup": target_client},
        listeners=(events.append, LoggingListener(), PrometheusListener(registry)),
    )  # fmt: skip
    errors: list[BaseException] = []
    for _ in range(3):
        with pytest.raises(openai.OpenAIError) as caught:
            client.chat.completions.create(model="gpt-A", messages=[{"role": "user", "content": "hi"}])
        errors.append(caught.value)
    logging.getLogger("resilient_openai").debug("client options: Authorization: Bearer %s", SENTINEL)
    logging.getLogger("openai._base_client").debug("api_key=%s", SENTINEL)

    places: dict[str, Any] = {
        "logs": caplog.text + "".join(r.getMessage() for r in caplog.records),
        "errors": [str(e) + repr(e) + repr(e.__cause__) for e in errors],
        "provenance": [repr(provenance(e)) for e in errors],
        "events": [repr(e) for e in events],
        "metrics": generate_latest(registry).decode(),
        "health": json.dumps(health(client)),
    }
    assert events, "the scenario must produce events"
    assert "resilient_openai" in places["metrics"]
    for where, text in places.items():
        for secret in (SENTINEL, OTHER, SENTINEL[8:], OTHER[3:]):
            assert secret not in str(text), f"secret found in {where}"
