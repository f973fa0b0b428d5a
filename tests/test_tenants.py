"""Tenants through the public API: the cache scope covers every way a tenant reaches the wire, and
an exhausted quota holds out one credential, never the target, through both shells."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_openai import (
    BreakerPolicy,
    CachePolicy,
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    breakers,
    provenance,
)
from resilient_openai.observe.events import CallRejected, Event
from resilient_openai.testing import Ok, Status

from .conftest import BASE_URL, Harness

KEY_ONE = "sk-tenant-one-0123456789abcdefKEY"
KEY_TWO = "sk-tenant-two-fedcba9876543210KEY"
QUOTA = Status(429, code_str="insufficient_quota", type="insufficient_quota")
CANNED = "Busy ({reason})."
#: The headers that carry a credential or pick a tenant, as the upstream records them.
TENANT_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")
_PROBES = itertools.count()


def _source(result: object) -> str | None:
    record = provenance(result)
    assert record is not None
    return None if record.source is None else record.source.value


# -- the cache scope ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """One way of reaching the upstream: a client's settings plus what each request adds."""

    api_key: str = KEY_ONE
    organization: str | None = None
    project: str | None = None
    base_url: str = BASE_URL
    default_headers: dict[str, str] = field(default_factory=dict)
    default_query: dict[str, str] = field(default_factory=dict)
    extra_headers: dict[str, Any] = field(default_factory=dict)
    extra_query: dict[str, str] = field(default_factory=dict)

    def client(self, root: Any) -> Any:
        """This caller's copy of ``root`` (sharing its chain and cache)."""
        return root.with_options(
            api_key=self.api_key, organization=self.organization, project=self.project,
            base_url=self.base_url, default_headers=self.default_headers,
            default_query=self.default_query,
        )  # fmt: skip

    def ask(self, harness: Harness, root: Any, prompt: str = "P") -> Any:
        """Ask ``prompt`` the way this caller does."""
        return harness.chat(
            self.client(root), messages=[{"role": "user", "content": prompt}],
            extra_headers=self.extra_headers, extra_query=self.extra_query,
        )  # fmt: skip

    def wire(self, harness: Harness, root: Any) -> tuple[object, ...]:
        """Everything on the wire that names or picks a tenant: a probe (a prompt nobody else
        asks, so never a cache hit) shows the path and tenant headers the upstream receives; the
        query is the client's default merged with the request's own."""
        assert _source(self.ask(harness, root, prompt=f"probe {next(_PROBES)}")) == "upstream"
        received = harness.upstream.requests[-1]
        headers = sorted((name, value) for name, value in received.headers.items() if name in TENANT_HEADERS)
        query = sorted({**self.default_query, **self.extra_query}.items())
        return (received.path, headers, query)


def _cased(name: str) -> st.SearchStrategy[str]:
    """``name`` spelt in some mix of cases (header names are case-insensitive)."""
    return st.sampled_from([name, name.upper(), name.title()])


def _headers(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A few tenant headers, names in any case, values from a small pool (so callers collide)."""
    return st.dictionaries(st.sampled_from(TENANT_HEADERS).flatmap(_cased), values, max_size=3)


_VALUES = st.sampled_from([f"Bearer {KEY_ONE}", f"Bearer {KEY_TWO}", "org-1", "proj-1"])
_QUERY = st.dictionaries(st.sampled_from(["tenant", "api-version"]), st.sampled_from(["a", "b"]), max_size=2)
CALLERS = st.builds(
    Caller,
    api_key=st.sampled_from([KEY_ONE, KEY_TWO]),
    organization=st.sampled_from([None, "org-1", "org-2"]),
    project=st.sampled_from([None, "proj-1"]),
    base_url=st.sampled_from([BASE_URL, "http://fake.test/v2"]),
    default_headers=_headers(_VALUES),
    default_query=_QUERY,
    extra_headers=_headers(_VALUES | st.just(openai.Omit())),
    extra_query=_QUERY,
)


def _read_through(harness: Harness) -> Any:
    policy = Policy(
        retry=RetryPolicy(rules={}), cache=CachePolicy(read_through=True),
        fallback=FallbackPolicy(routes={"gpt-A": Route(steps=(FallbackStep(kind="cache"),))}),
    )  # fmt: skip
    return harness.client(policy)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=CALLERS, second=CALLERS, same=st.booleans())
def test_callers_share_cached_answers_only_when_they_send_the_same_tenant(
    harness: Harness, first: Caller, second: Caller, same: bool
) -> None:
    """Two callers differing in any key, organization, project, base URL, tenant header (client
    default or per request, in any case) or query parameter never get each other's cached
    answer; identical callers do."""
    second = first if same else second
    root = _read_through(harness)
    assert _source(first.ask(harness, root)) == "upstream"
    differ = first.wire(harness, root) != second.wire(harness, root)
    answered = _source(second.ask(harness, root))
    if same:
        assert answered == "cache"
    elif differ:
        assert answered == "upstream"


def test_a_per_request_key_is_its_own_tenant(harness: Harness) -> None:
    """The same request under another key sent as a per-request header reaches the upstream."""
    root = _read_through(harness)
    mine = Caller(extra_headers={"Authorization": f"Bearer {KEY_ONE}"})
    theirs = Caller(extra_headers={"authorization": f"Bearer {KEY_TWO}"})
    assert _source(mine.ask(harness, root)) == "upstream"
    assert _source(theirs.ask(harness, root)) == "upstream"
    assert _source(Caller(extra_headers={"AUTHORIZATION": f"Bearer {KEY_ONE}"}).ask(harness, root)) == "cache"
    assert [r.headers["authorization"] for r in harness.upstream.requests] == [
        f"Bearer {KEY_ONE}",
        f"Bearer {KEY_TWO}",
    ]


def test_an_organization_in_default_headers_is_its_own_tenant(harness: Harness) -> None:
    """Same key, another organization given as a default header: no shared answer."""
    root = _read_through(harness)
    assert _source(Caller(default_headers={"OpenAI-Organization": "org-1"}).ask(harness, root)) == "upstream"
    assert _source(Caller(default_headers={"OpenAI-Organization": "org-2"}).ask(harness, root)) == "upstream"
    assert _source(Caller(organization="org-1").ask(harness, root)) == "upstream"  # another source


# -- quota belongs to a credential ---------------------------------------------------------------


def _quota_policy(*steps: FallbackStep, quota_break: float = 600.0) -> Policy:
    return Policy(
        retry=RetryPolicy(rules={}), breaker=BreakerPolicy(fail_max=1, quota_break=quota_break),
        fallback=FallbackPolicy(routes={"gpt-A": Route(steps=steps)}),
    )  # fmt: skip


def test_one_keys_empty_quota_falls_back_while_another_key_gets_through(harness: Harness) -> None:
    """Key one's quota runs out: for quota_break it is answered canned without a request, key two
    keeps reaching the upstream, and the shared circuit stays closed."""
    harness.upstream.script("gpt-A", [QUOTA])
    mine = harness.client(_quota_policy(FallbackStep(kind="canned", text=CANNED)), api_key=KEY_ONE)
    theirs = mine.with_options(api_key=KEY_TWO)
    assert harness.chat(mine).choices[0].message.content == "Busy (quota_exhausted)."
    held = harness.chat(mine)
    record = provenance(held)
    assert record is not None
    assert (record.source, record.reason) == ("canned", "circuit_open")
    assert [a.verdict for a in record.attempts] == ["circuit_open"]
    assert harness.upstream.count() == 1
    for _ in range(3):
        assert _source(harness.chat(theirs)) == "upstream"
    assert harness.upstream.count() == 4
    assert [r.headers["authorization"] for r in harness.upstream.requests[1:]] == [f"Bearer {KEY_TWO}"] * 3
    assert [s.state for s in breakers(mine).snapshot()] == ["closed"]
    harness.clock.advance(599.0)
    assert _source(harness.chat(mine)) == "canned"
    harness.clock.advance(1.0)
    assert _source(harness.chat(mine)) == "upstream"
    assert harness.upstream.count() == 5


def test_a_per_request_key_out_of_quota_is_refused_alone(harness: Harness) -> None:
    """Two keys sent as per-request headers through one client: the one out of quota gets
    CircuitOpenError (with retry_after) and a CallRejected event; the other is answered."""
    events: list[Event] = []
    harness.upstream.script("gpt-A", [QUOTA])
    client = harness.client(_quota_policy(), runtime={"listeners": (events.append,)})
    mine = {"extra_headers": {"Authorization": f"Bearer {KEY_ONE}"}}
    theirs = {"extra_headers": {"authorization": f"Bearer {KEY_TWO}"}}
    with pytest.raises(openai.RateLimitError):
        harness.chat(client, **mine)
    harness.clock.advance(100.0)
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client, **mine)
    assert caught.value.retry_after == pytest.approx(500.0)
    assert caught.value.breaker is not None
    assert "gpt-A" in caught.value.breaker
    assert KEY_ONE not in str(caught.value)
    rejected = [e for e in events if isinstance(e, CallRejected)]
    assert [e.breaker for e in rejected] == [caught.value.breaker]
    assert rejected[0].retry_after == pytest.approx(500.0)
    assert _source(harness.chat(client, **theirs)) == "upstream"
    assert harness.upstream.count() == 2
    assert [s.state for s in breakers(client).snapshot()] == ["closed"]


def test_resetting_the_breaker_lets_a_key_out_of_quota_call_again(harness: Harness) -> None:
    """An operator who topped up the quota resets the target's breaker: the key calls again."""
    harness.upstream.script("gpt-A", [QUOTA])
    client = harness.client(_quota_policy())
    with pytest.raises(openai.RateLimitError):
        harness.chat(client)
    with pytest.raises(CircuitOpenError) as caught:
        harness.chat(client)
    assert caught.value.breaker is not None
    breakers(client).reset(caught.value.breaker)
    assert _source(harness.chat(client)) == "upstream"
    assert harness.upstream.count() == 2


def test_without_a_quota_break_every_call_asks_the_upstream(harness: Harness) -> None:
    """``quota_break = 0``: nothing is remembered, each call learns its quota from the upstream."""
    harness.upstream.script("gpt-A", [QUOTA, QUOTA, Ok()])
    client = harness.client(_quota_policy(quota_break=0.0))
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            harness.chat(client)
    assert _source(harness.chat(client)) == "upstream"
    assert harness.upstream.count() == 3


def test_a_streaming_caller_out_of_quota_is_held_alone(harness: Harness) -> None:
    """A stream refused with insufficient_quota before its first token holds its key the same way."""
    harness.upstream.script("gpt-A", [QUOTA])
    mine = harness.client(_quota_policy(FallbackStep(kind="canned", text=CANNED)), api_key=KEY_ONE)
    for reason in ("quota_exhausted", "circuit_open"):
        stream, chunks, error = harness.stream_chat(mine)
        assert error is None
        assert chunks
        record = provenance(stream)
        assert record is not None
        assert (record.source, record.reason) == ("canned", reason)
    assert harness.upstream.count() == 1
    _, _, error = harness.stream_chat(mine.with_options(api_key=KEY_TWO))
    assert error is None
    assert harness.upstream.count() == 2
