"""QuotaLedger: a credential out of quota is refused on one target until its hold ends, alone."""

from __future__ import annotations

import pytest

from resilient_openai._breaker import BreakerRegistry, QuotaLedger, quota_hold
from resilient_openai._classify import Verdict
from resilient_openai._policy import BreakerPolicy
from resilient_openai.observe.events import CallRejected, Event, EventBus
from resilient_openai.testing._clock import FakeClock


def _ledger(clock: FakeClock, maxsize: int = 16) -> QuotaLedger:
    return QuotaLedger(clock=clock, bus=EventBus(), maxsize=maxsize)


@pytest.mark.parametrize(
    ("verdict", "policy", "expected"),
    [
        (Verdict.QUOTA_EXHAUSTED, BreakerPolicy(quota_break=600.0), 600.0),
        (Verdict.QUOTA_EXHAUSTED, BreakerPolicy(quota_break=0.0), 0.0),
        (Verdict.QUOTA_EXHAUSTED, BreakerPolicy(enabled=False), 0.0),
        (Verdict.RATE_LIMITED, BreakerPolicy(), 0.0),
        (Verdict.SUCCESS, BreakerPolicy(), 0.0),
    ],
)
def test_quota_hold(verdict: Verdict, policy: BreakerPolicy, expected: float) -> None:
    """Only quota exhaustion under an enabled policy holds a credential, for ``quota_break``."""
    assert quota_hold(verdict, policy) == expected


def test_a_held_credential_is_refused_on_its_target_only() -> None:
    """The hold covers one (target, credential) pair: other credentials and targets go through."""
    clock = FakeClock()
    ledger = _ledger(clock)
    assert not ledger.active
    ledger.exhausted("t", "one", 600.0)
    assert ledger.active
    refused = ledger.refusal("t", "one")
    assert refused is not None
    assert (refused.breaker, refused.retry_after) == ("t", 600.0)
    assert ledger.refusal("t", "two") is None
    assert ledger.refusal("u", "one") is None


def test_the_hold_counts_down_and_ends_on_the_clock() -> None:
    """retry_after shrinks with the clock; at the end the credential goes through, the ledger empties."""
    clock = FakeClock()
    ledger = _ledger(clock)
    ledger.exhausted("t", "one", 600.0)
    clock.advance(599.5)
    refused = ledger.refusal("t", "one")
    assert refused is not None
    assert refused.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert ledger.refusal("t", "one") is None
    assert not ledger.active


def test_a_refusal_is_announced_like_an_open_circuits() -> None:
    """Each refusal emits CallRejected with the target and the time left."""
    clock = FakeClock()
    events: list[Event] = []
    ledger = QuotaLedger(clock=clock, bus=EventBus((events.append,)))
    ledger.exhausted("t", "one", 60.0)
    clock.advance(10.0)
    ledger.refusal("t", "one")
    ledger.refusal("t", "two")
    assert [(e.breaker, e.retry_after) for e in events if isinstance(e, CallRejected)] == [("t", 50.0)]


def test_the_ledger_is_bounded() -> None:
    """Past maxsize pairs the least recently used is forgotten (it costs one more request)."""
    clock = FakeClock()
    ledger = _ledger(clock, maxsize=2)
    for credential in ("a", "b", "c"):
        ledger.exhausted("t", credential, 600.0)
    assert [ledger.refusal("t", c) is not None for c in ("a", "b", "c")] == [False, True, True]


def test_forget_clears_one_target() -> None:
    """forget(target) lets every credential call that target again, and no other."""
    ledger = _ledger(FakeClock())
    ledger.exhausted("t", "one", 600.0)
    ledger.exhausted("u", "one", 600.0)
    ledger.forget("t")
    assert ledger.refusal("t", "one") is None
    assert ledger.refusal("u", "one") is not None


@pytest.mark.parametrize("action", ["close", "reset"])
def test_closing_or_resetting_a_breaker_forgets_its_quota_holds(action: str) -> None:
    """An operator's close or reset of a target's breaker also ends its credentials' holds."""
    registry = BreakerRegistry(BreakerPolicy(), clock=FakeClock(), bus=EventBus())
    registry.get("t")
    registry.quota.exhausted("t", "one", 600.0)
    getattr(registry, action)("t")
    assert registry.quota.refusal("t", "one") is None
