"""Requests that cannot succeed are refused before anything is sent, and never touch a breaker."""

from __future__ import annotations

from typing import Any

import pytest

from resilient_openai import (
    FallbackPolicy,
    Policy,
    RequestRejectedError,
    Route,
    ValidationPolicy,
    health,
    provenance,
)
from resilient_openai.testing import Ok, Status

from .conftest import Harness


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"messages": []}, "messages_present"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "known_role"),
        ({"temperature": 3.5}, "parameter_range"),
        ({"top_p": -0.1}, "parameter_range"),
        ({"n": 0}, "parameter_range"),
        ({"max_tokens": 0}, "parameter_range"),
    ],
)
def test_refused_before_sending(harness: Harness, kwargs: dict[str, Any], rule: str) -> None:
    """Each rule refuses its request with a clear error; the upstream and breakers see nothing."""
    client = harness.client()
    with pytest.raises(RequestRejectedError) as caught:
        harness.chat(client, **kwargs)
    assert caught.value.rule == rule
    assert harness.upstream.count() == 0
    assert health(client)["breakers"] == []


def test_oversized_prompt_goes_to_the_larger_model(harness: Harness) -> None:
    """A prompt estimated past the window is sent straight to the route's larger-context model."""
    harness.upstream.set_default("gpt-long", Ok(text="long"))
    policy = Policy(
        validation=ValidationPolicy(context_windows={"gpt-A": 10}),
        fallback=FallbackPolicy(routes={"gpt-A": Route(context_model="gpt-long")}),
    )
    result = harness.chat(harness.client(policy), messages=[{"role": "user", "content": "x" * 400}])
    assert result.model == "gpt-long"
    assert harness.upstream.count(model="gpt-A") == 0
    assert provenance(result).source == "fallback_model"  # type: ignore[union-attr]


def test_oversized_prompt_without_a_larger_model_is_refused(harness: Harness) -> None:
    """Without a larger-context model the oversized prompt is refused before sending."""
    policy = Policy(validation=ValidationPolicy(context_windows={"gpt-": 10}))
    with pytest.raises(RequestRejectedError) as caught:
        harness.chat(harness.client(policy), messages=[{"role": "user", "content": "x" * 400}])
    assert caught.value.rule == "context_window"
    assert harness.upstream.count() == 0


def test_validation_can_be_switched_off(harness: Harness) -> None:
    """With validation off, the upstream judges the request itself."""
    harness.upstream.set_default("gpt-A", Status(400))
    policy = Policy(validation=ValidationPolicy(enabled=False))
    with pytest.raises(Exception, match="400"):
        harness.chat(harness.client(policy), temperature=3.5)
    assert harness.upstream.count() == 1
