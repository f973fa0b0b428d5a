"""The retry budget through the public API: a brownout is not multiplied by every caller's retries.

Each test drives calls through the sync and the async client against the fake upstream, on the
fake clock, and counts what reached the upstream.
"""

from __future__ import annotations

import openai
import pytest

from resilient_openai import (
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryBudget,
    RetryPolicy,
    RetryRule,
    Route,
    Verdict,
    health,
    provenance,
)
from resilient_openai.observe.events import Event, RetryBudgetExhausted
from resilient_openai.testing import Ok, Reset, Status

from .conftest import Harness

TARGET = "fake.test/v1:gpt-A"
#: Three attempts without waiting, so the clock stands still and every count is in one window.
NO_WAIT = RetryRule(attempts=3, base=0.0, cap=0.0)


def _policy(budget: RetryBudget, **sections: object) -> Policy:
    """Retries without waits and no breaker (so only the budget stops retries), plus ``sections``."""
    rules = {Verdict.SERVER_ERROR: NO_WAIT, Verdict.CONNECTION_ERROR: NO_WAIT}
    retry = RetryPolicy(rules=rules, budget=budget)
    return Policy.model_validate({"retry": retry, "breaker": BreakerPolicy(enabled=False), **sections})


def _brownout(harness: Harness, client: object, calls: int) -> None:
    """``calls`` calls to gpt-A, each failing with the upstream's 503."""
    for _ in range(calls):
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)


def test_a_brownout_gets_at_most_the_budgets_retries(harness: Harness) -> None:
    """50 failing calls send 50 first attempts and ratio * 50 + floor * window retries, not 100."""
    harness.upstream.set_default("gpt-A", Status(503))
    events: list[Event] = []
    budget = RetryBudget(ratio=0.2, window=10.0, min_per_second=0.5)
    client = harness.client(_policy(budget), runtime={"listeners": [events.append]})
    _brownout(harness, client, 50)
    assert harness.upstream.count(model="gpt-A") == 50 + int(0.2 * 50 + 0.5 * 10.0)
    refused = [event for event in events if isinstance(event, RetryBudgetExhausted)]
    assert refused
    assert {(event.breaker, event.verdict, event.model) for event in refused} == {
        (TARGET, "server_error", "gpt-A")
    }


def test_without_a_budget_every_caller_retries(harness: Harness) -> None:
    """The same brownout with the budget off: every call makes all its attempts."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(RetryBudget(enabled=False)))
    _brownout(harness, client, 50)
    assert harness.upstream.count(model="gpt-A") == 150
    assert health(client)["budgets"] == []


def test_a_lone_transient_failure_is_still_retried_by_default(harness: Harness) -> None:
    """The default budget's floor lets a quiet client's first failure be retried."""
    harness.upstream.script("gpt-A", [Status(503)])
    harness.upstream.set_default("gpt-A", Ok(text="second time"))
    answer = harness.chat(harness.client())
    assert answer.choices[0].message.content == "second time"
    assert harness.upstream.count(model="gpt-A") == 2


def test_the_floor_alone_retries_a_lone_caller(harness: Harness) -> None:
    """With ratio 0, the floor is the whole budget: one failing call still gets its retry."""
    harness.upstream.script("gpt-A", [Status(503)])
    harness.upstream.set_default("gpt-A", Ok(text="recovered"))
    client = harness.client(_policy(RetryBudget(ratio=0.0, window=10.0, min_per_second=0.1)))
    assert harness.chat(client).choices[0].message.content == "recovered"
    assert harness.upstream.count(model="gpt-A") == 2


def test_health_shows_each_targets_budget(harness: Harness) -> None:
    """health() lists requests and retries in the window, the limit, and whether it is spent."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(RetryBudget(ratio=0.2, window=10.0, min_per_second=0.5)))
    _brownout(harness, client, 50)
    spent = {"name": TARGET, "requests": 50, "retries": 15, "limit": 15, "exhausted": True}
    assert health(client)["budgets"] == [spent]
    harness.clock.advance(10.0)
    renewed = {"name": TARGET, "requests": 0, "retries": 0, "limit": 5, "exhausted": False}
    assert health(client)["budgets"] == [renewed]


def test_the_budget_is_whole_again_after_its_window(harness: Harness) -> None:
    """Once the window has passed, a failing call is retried again."""
    harness.upstream.set_default("gpt-A", Status(503))
    client = harness.client(_policy(RetryBudget(ratio=0.0, window=10.0, min_per_second=0.1)))
    _brownout(harness, client, 3)
    assert harness.upstream.count(model="gpt-A") == 3 + 1
    harness.clock.advance(10.0)
    _brownout(harness, client, 1)
    assert harness.upstream.count(model="gpt-A") == 4 + 2


def test_a_spent_budget_moves_the_fallback_walk_on(harness: Harness) -> None:
    """When gpt-A's budget refuses a retry (of a quick connection drop, the one failure retried
    while the route goes on), the route's next step answers at once."""
    harness.upstream.set_default("gpt-A", Reset())
    harness.upstream.set_default("gpt-B", Ok(text="backup"))
    route = FallbackPolicy(routes={"gpt-A": Route(steps=(FallbackStep(kind="model", model="gpt-B"),))})
    budget = RetryBudget(ratio=0.0, window=10.0, min_per_second=0.1)
    client = harness.client(_policy(budget, fallback=route))
    for _ in range(3):
        answer = harness.chat(client)
        assert answer.choices[0].message.content == "backup"
        record = provenance(answer)
        assert record is not None
        assert record.source == "fallback_model"
    assert harness.upstream.count(model="gpt-A") == 3 + 1
    assert harness.upstream.count(model="gpt-B") == 3


def test_each_target_has_its_own_budget(harness: Harness) -> None:
    """A brownout that spends gpt-A's budget leaves gpt-B's retries alone."""
    harness.upstream.set_default("gpt-A", Status(503))
    harness.upstream.script("gpt-B", [Status(503)])
    harness.upstream.set_default("gpt-B", Ok(text="B"))
    client = harness.client(_policy(RetryBudget(ratio=0.0, window=10.0, min_per_second=0.1)))
    _brownout(harness, client, 3)
    assert harness.chat(client, model="gpt-B").choices[0].message.content == "B"
    assert harness.upstream.count(model="gpt-B") == 2
    assert [budget["name"] for budget in health(client)["budgets"]] == [TARGET, "fake.test/v1:gpt-B"]


def test_a_call_an_open_circuit_rejected_is_no_request(harness: Harness) -> None:
    """Rejections by an open circuit reached no one, so they buy no retries."""
    harness.upstream.set_default("gpt-A", Status(503))
    retry = RetryPolicy(rules={Verdict.SERVER_ERROR: NO_WAIT})
    client = harness.client(Policy(retry=retry, breaker=BreakerPolicy(fail_max=1, break_duration=60.0)))
    for _ in range(5):
        with pytest.raises(openai.OpenAIError):
            harness.chat(client)
    [budget] = health(client)["budgets"]
    assert (budget["requests"], budget["retries"]) == (1, 0)


def test_a_forgotten_budget_is_not_kept_alive_by_a_client(harness: Harness) -> None:
    """Past ``max_breakers`` targets the registry forgets a budget; a client that used it asks the
    registry again, so it and its copies count into the one budget health() shows."""
    harness.upstream.set_default("*", Ok(text="fine"))
    policy = Policy.from_dict({"breaker": {"enabled": False, "max_breakers": 2}})
    client = harness.client(policy)
    for model in ("m0", "m1", "m2"):  # m2's budget pushes m0's out
        harness.chat(client, model=model)
    copy = client.with_options(timeout=30.0)
    harness.chat(copy, model="m0")
    harness.chat(client, model="m0")
    requests = {entry["name"]: entry["requests"] for entry in health(client)["budgets"]}
    assert requests == {"fake.test/v1:m2": 1, "fake.test/v1:m0": 2}
