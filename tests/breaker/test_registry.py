"""BreakerRegistry: one breaker per key, per-target policies, the bound and eviction order; default_key."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from resilient_openai._breaker import AnyBreaker, BreakerRegistry, default_key
from resilient_openai._classify import Verdict
from resilient_openai._policy import BreakerPolicy
from resilient_openai.observe.events import EventBus
from resilient_openai.testing._clock import FakeClock


def _registry(**policy: Any) -> BreakerRegistry:
    return BreakerRegistry(BreakerPolicy(**policy), clock=FakeClock(), bus=EventBus())


def _trip(breaker: AnyBreaker) -> None:
    while breaker.state == "closed":
        breaker.acquire().record(Verdict.SERVER_ERROR, duration=0.1)


# -- get ----------------------------------------------------------------------------------------


def test_get_creates_once_and_returns_the_same_breaker() -> None:
    """The first get creates the breaker, named by its key; later gets return it."""
    registry = _registry()
    breaker = registry.get("a")
    assert registry.get("a") is breaker
    assert breaker.name == "a"
    assert len(registry) == 1


def test_a_per_target_policy_applies_at_creation() -> None:
    """The override is used to create the breaker; a later, different override is ignored."""
    registry = _registry(fail_max=5)
    own = BreakerPolicy(fail_max=1)
    assert registry.get("t", own).policy is own
    assert registry.get("t", BreakerPolicy(fail_max=9)).policy is own
    assert registry.get("other").policy.fail_max == 5


def test_concurrent_gets_of_one_key_share_one_breaker() -> None:
    """32 threads asking for the same new key all get the same breaker."""
    registry = _registry()
    barrier = threading.Barrier(32)
    found: list[AnyBreaker] = []

    def fetch() -> None:
        barrier.wait()
        found.append(registry.get("shared"))

    threads = [threading.Thread(target=fetch) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len({id(breaker) for breaker in found}) == 1
    assert len(found) == 32


# -- the bound ----------------------------------------------------------------------------------


def test_the_registry_never_exceeds_max_breakers() -> None:
    """Creating more breakers than the bound keeps the count at the bound."""
    registry = _registry(max_breakers=3)
    for index in range(10):
        registry.get(f"k{index}")
    assert len(registry) == 3
    assert [breaker.name for breaker in registry] == ["k7", "k8", "k9"]


def test_the_least_recently_used_closed_breaker_goes_first() -> None:
    """A get refreshes recency, so the untouched breaker is the one dropped."""
    registry = _registry(max_breakers=3)
    for key in ("a", "b", "c"):
        registry.get(key)
    registry.get("a")
    registry.get("d")
    assert "b" not in registry
    assert {"a", "c", "d"} == {breaker.name for breaker in registry}


def test_closed_breakers_are_dropped_before_open_ones() -> None:
    """An older open breaker survives a newer closed one."""
    registry = _registry(max_breakers=2, fail_max=1)
    _trip(registry.get("open-one"))
    registry.get("closed-one")
    registry.get("new")
    assert "open-one" in registry
    assert "closed-one" not in registry


def test_isolated_breakers_are_dropped_last() -> None:
    """With only tripped breakers left, an open one goes before an isolated one."""
    registry = _registry(max_breakers=2, fail_max=1)
    registry.isolate("isolated")
    _trip(registry.get("open"))
    registry.get("new")
    assert [breaker.name for breaker in registry] == ["isolated", "new"]


def test_the_breaker_just_created_is_never_the_one_dropped() -> None:
    """Even when every other breaker is isolated, the new one stays (and the bound holds)."""
    registry = _registry(max_breakers=2)
    registry.isolate("x")
    registry.isolate("y")
    new = registry.get("z")
    assert registry.get("z") is new
    assert len(registry) == 2


# -- operator actions and snapshots -------------------------------------------------------------


def test_isolate_close_and_reset_by_key() -> None:
    """The registry forwards the operator actions to the named breaker."""
    registry = _registry(fail_max=1)
    registry.isolate("t")
    assert registry.get("t").state == "isolated"
    registry.close("t")
    assert registry.get("t").state == "closed"
    _trip(registry.get("t"))
    registry.reset("t")
    assert registry.get("t").snapshot().consecutive_failures == 0


def test_isolate_can_precede_first_use() -> None:
    """Isolating an unknown key creates its breaker, already isolated."""
    registry = _registry()
    registry.isolate("not-called-yet")
    assert registry.get("not-called-yet").state == "isolated"


@pytest.mark.parametrize("action", ["close", "reset"])
def test_close_and_reset_of_an_unknown_key_raise(action: str) -> None:
    """A typo in an operator's key is an error, not a new breaker."""
    registry = _registry()
    with pytest.raises(KeyError, match="no breaker named 'nope'"):
        getattr(registry, action)("nope")
    assert len(registry) == 0


def test_snapshot_lists_every_breaker() -> None:
    """One snapshot per breaker, least recently used first."""
    registry = _registry(fail_max=1)
    registry.get("a")
    _trip(registry.get("b"))
    assert [(s.name, s.state) for s in registry.snapshot()] == [("a", "closed"), ("b", "open")]


# -- default_key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "model", "expected"),
    [
        ("https://api.openai.com/v1", "gpt-4o", "api.openai.com/v1:gpt-4o"),
        ("https://api.openai.com/v1/", "gpt-4o", "api.openai.com/v1:gpt-4o"),
        ("https://user:secret@API.OpenAI.com/v1?api-key=sk-x#frag", "gpt-4o", "api.openai.com/v1:gpt-4o"),
        ("http://localhost:8000/v1", "llama3", "localhost:8000/v1:llama3"),
        ("http://[::1]:8080/v1", "m", "[::1]:8080/v1:m"),
        ("https://example.test", None, "example.test"),
        ("api.example.test/openai/v1", "m", "api.example.test/openai/v1:m"),
        ("https://example.test:notaport/v1", "m", "example.test/v1:m"),
    ],
)
def test_default_key(base_url: str, model: str | None, expected: str) -> None:
    """Host (and port) plus path, then the model; no scheme, credentials, query or fragment."""
    assert default_key(base_url, model) == expected
