"""The chain's order (validate -> fallback -> retry -> breaker -> attempt -> chaos) and the verdict
table, pinned: each through the behaviour it causes, and the order also as the one tuple."""

from __future__ import annotations

import openai
import pytest

from resilient_openai import (
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    RetryRule,
    Route,
    Verdict,
    health,
    provenance,
)
from resilient_openai._chain import ORDER
from resilient_openai._classify import TRAITS
from resilient_openai.testing import Reset, Status

from .conftest import Harness

CANNED = FallbackStep(kind="canned", text="busy")
FAST = RetryRule(attempts=3, base=0.01, cap=0.01, jitter=0.0)


def test_one_order_for_both_flavours() -> None:
    """The order is one tuple, read by both the sync and the asyncio chain."""
    assert ORDER == ("validate", "fallback", "retry", "breaker", "attempt", "chaos")


def test_the_breaker_sees_each_retry_and_stops_the_next(harness: Harness) -> None:
    """Retry outside the breaker: each attempt is counted, the second failure opens the circuit,
    which stops the third attempt at once (nothing else to go to: the failure is the answer)."""
    harness.upstream.set_default("gpt-A", Status(503))
    policy = Policy(
        retry=RetryPolicy(rules={Verdict.SERVER_ERROR: FAST}),
        breaker=BreakerPolicy(fail_max=2, break_duration=300.0),
    )
    with pytest.raises(openai.InternalServerError) as caught:
        harness.chat(harness.client(policy))
    record = provenance(caught.value)
    assert record is not None
    assert [a.verdict for a in record.attempts] == ["server_error", "server_error"]
    assert harness.upstream.count() == 2


def test_the_fallback_answers_after_the_primarys_own_retry(harness: Harness) -> None:
    """Fallback outside retry: a quick connection drop (the one failure retried while the route
    goes on) is tried again on the primary before the route's next step answers."""
    harness.upstream.set_default("gpt-A", Reset())
    policy = Policy(
        retry=RetryPolicy(rules={Verdict.CONNECTION_ERROR: FAST}),
        fallback=FallbackPolicy(routes={"gpt-A": Route(steps=(CANNED,))}),
    )
    record = provenance(harness.chat(harness.client(policy)))
    assert record is not None
    assert record.source == "canned"
    assert [a.verdict for a in record.attempts] == ["connection_error"] * 3
    assert harness.upstream.count() == 3


def test_validation_comes_before_everything(harness: Harness) -> None:
    """A request that cannot succeed is refused before any layer spends on it: no upstream
    request, no breaker made, no fallback answer."""
    policy = Policy(fallback=FallbackPolicy(routes={"*": Route(steps=(CANNED,))}))
    client = harness.client(policy)
    with pytest.raises(openai.OpenAIError, match="at least one message"):
        harness.chat(client, messages=[])
    assert harness.upstream.count() == 0
    assert health(client)["breakers"] == []


def test_forced_failures_sit_inside_the_breaker(harness: Harness) -> None:
    """A forced failure is counted by the breaker like a real one: it opens the circuit."""
    policy = Policy(
        retry=RetryPolicy(rules={}),
        breaker=BreakerPolicy(fail_max=2, break_duration=300.0),
        fallback=FallbackPolicy(forced_failures={"gpt-A": Verdict.SERVER_ERROR}),
    )
    client = harness.client(policy)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            harness.chat(client)
    assert [b["state"] for b in health(client)["breakers"]] == ["open"]
    assert harness.upstream.count() == 0


def test_every_verdict_has_its_row() -> None:
    """The table names every verdict, and a verdict that trips a breaker is one that may."""
    assert set(TRAITS) == set(Verdict)
    for verdict, traits in TRAITS.items():
        assert not traits.breaker_failure or traits.may_trip, verdict


def test_a_conflict_is_fallen_back_from_but_never_trips(harness: Harness) -> None:
    """What happens to a 409, in one place: the route answers (with a next step the target is not
    asked again), and the circuit stays closed however many conflicts arrive."""
    harness.upstream.set_default("gpt-A", Status(409))
    policy = Policy(
        retry=RetryPolicy(rules={Verdict.CONFLICT: FAST}),
        breaker=BreakerPolicy(fail_max=2),
        fallback=FallbackPolicy(routes={"gpt-A": Route(steps=(CANNED,))}),
    )
    client = harness.client(policy)
    for _ in range(3):
        record = provenance(harness.chat(client))
        assert record is not None
        assert record.source == "canned"
        assert record.reason == "conflict"
    assert harness.upstream.count() == 3
    assert [b["state"] for b in health(client)["breakers"]] == ["closed"]
