"""Cache keys: tenants never share keys, equal requests always do, irrelevant fields are ignored."""

from __future__ import annotations

import io
import random
from typing import Any

import openai
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from resilient_openai._fallback.keys import PROCESS_SECRET, request_key, scope_id

#: Collisions are either impossible or a broken hash: a few dozen examples each keep the suite fast.
FEW = settings(max_examples=30, deadline=None)
SECRET = b"k" * 32
BASE_URL = "https://api.openai.com/v1/"
OPTIONAL_TEXT = st.none() | st.text(max_size=40)
PROMPTS = st.text(min_size=1, max_size=200)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _scope(api_key: str | None = "sk-test", **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "api_key": api_key,
        "organization": None,
        "project": None,
        "base_url": BASE_URL,
        "secret": SECRET,
    }
    fields.update(overrides)
    return scope_id(**fields)


def _chat(prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra}


def _key(body: dict[str, Any], scope: str | None = None, operation: str = "chat.completions") -> str:
    key = request_key(operation, body, scope or _scope())
    assert key is not None
    return key


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@FEW
@given(a=st.text(max_size=60), b=st.text(max_size=60), prompt=PROMPTS)
def test_different_api_keys_never_share_a_key(a: str, b: str, prompt: str) -> None:
    """Two API keys never produce the same request key for the same prompt."""
    assume(a != b)
    assert _key(_chat(prompt), _scope(a)) != _key(_chat(prompt), _scope(b))


@FEW
@given(a=OPTIONAL_TEXT, b=OPTIONAL_TEXT, prompt=PROMPTS)
def test_different_organizations_never_share_a_key(a: str | None, b: str | None, prompt: str) -> None:
    """Two organizations (None and "" included) never share a request key."""
    assume(a != b)
    assert _key(_chat(prompt), _scope(organization=a)) != _key(_chat(prompt), _scope(organization=b))


@FEW
@given(a=OPTIONAL_TEXT, b=OPTIONAL_TEXT, prompt=PROMPTS)
def test_different_projects_never_share_a_key(a: str | None, b: str | None, prompt: str) -> None:
    """Two projects never share a request key."""
    assume(a != b)
    assert _key(_chat(prompt), _scope(project=a)) != _key(_chat(prompt), _scope(project=b))


@FEW
@given(a=st.text(max_size=60), b=st.text(max_size=60), prompt=PROMPTS)
def test_different_base_urls_never_share_a_key(a: str, b: str, prompt: str) -> None:
    """Two endpoints never share a request key."""
    assume(a != b)
    assert _key(_chat(prompt), _scope(base_url=a)) != _key(_chat(prompt), _scope(base_url=b))


@FEW
@given(a=OPTIONAL_TEXT, b=OPTIONAL_TEXT)
def test_fields_cannot_bleed_into_each_other(a: str | None, b: str | None) -> None:
    """Moving text from one scope field to the next changes the scope."""
    assume((a, b) != (b, a))
    assert _scope(organization=a, project=b) != _scope(organization=b, project=a)


@FEW
@given(api_key=OPTIONAL_TEXT, body=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
def test_same_inputs_give_the_same_key(api_key: str | None, body: dict[str, Any]) -> None:
    """Equal inputs give equal keys, call after call."""
    assert request_key("responses", body, _scope(api_key)) == request_key(
        "responses", dict(body), _scope(api_key)
    )


@FEW
@given(body=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6), seed=st.integers())
def test_key_order_does_not_matter(body: dict[str, Any], seed: int) -> None:
    """Reordering the keys of any object in the body keeps the key."""
    scope = _scope()
    assert request_key("responses", body, scope) == request_key(
        "responses", _shuffled(body, random.Random(seed)), scope
    )


@FEW
@given(prompt=PROMPTS, include_usage=st.booleans())
def test_streamed_and_plain_requests_share_a_key(prompt: str, include_usage: bool) -> None:
    """``stream`` and ``stream_options`` do not change the key."""
    streamed = _chat(prompt, stream=True, stream_options={"include_usage": include_usage})
    assert _key(streamed) == _key(_chat(prompt, stream=False)) == _key(_chat(prompt))


def test_the_api_key_never_appears_in_keys() -> None:
    """Neither the scope nor the request key contains the API key."""
    api_key = "sk-proj-abcdef0123456789"
    scope = _scope(api_key)
    assert api_key not in scope
    assert api_key not in _key(_chat(), scope)
    assert "abcdef0123456789" not in scope + _key(_chat(), scope)


def test_the_secret_changes_the_scope() -> None:
    """The same tenant gets a different scope under another secret."""
    assert _scope(secret=SECRET) != _scope(secret=PROCESS_SECRET)


def test_a_short_secret_is_rejected() -> None:
    """A secret too short to key the hash is refused."""
    with pytest.raises(ValueError, match="16 bytes"):
        _scope(secret=b"short")


def test_the_operation_is_part_of_the_key() -> None:
    """The same body under two operations gets two keys."""
    body = {"model": "m", "input": "hi"}
    assert _key(body, operation="responses") != _key(body, operation="completions")


@pytest.mark.parametrize(
    ("field", "a", "b"),
    [
        ("temperature", 0.0, 1.0),
        ("seed", 1, 2),
        ("model", "gpt-4o", "gpt-4o-mini"),
        ("tools", [], [{"type": "function", "function": {"name": "f"}}]),
        ("parallel_tool_calls", True, False),
        ("response_format", {"type": "text"}, {"type": "json_object"}),
        ("user", "alice", "bob"),
        ("metadata", {"tenant": "a"}, {"tenant": "b"}),
    ],
)
def test_fields_that_change_the_answer_change_the_key(field: str, a: Any, b: Any) -> None:
    """Sampling, model, tools and end-user fields are part of the key."""
    assert _key(_chat(**{field: a})) != _key(_chat(**{field: b}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service_tier", "flex"),
        ("store", True),
        ("prompt_cache_key", "k1"),
        ("stream_options", {"include_usage": True}),
        ("n", 1),
        ("max_tokens", openai.NOT_GIVEN),
        ("max_tokens", openai.omit),
        ("conversation", openai.NOT_GIVEN),
    ],
)
def test_fields_that_cannot_change_the_answer_are_ignored(field: str, value: Any) -> None:
    """Transport, tier, upstream-cache hints, default ``n`` and SDK sentinels leave the key alone."""
    assert _key(_chat(**{field: value})) == _key(_chat())


def test_foreground_responses_are_cacheable() -> None:
    """``background: false`` is an ordinary request with a key."""
    assert request_key("responses", {"model": "m", "input": "hi", "background": False}, _scope()) is not None


def test_store_matters_for_responses() -> None:
    """For Responses, ``store`` decides whether the answer's id can be chained, so it is kept."""
    body = {"model": "m", "input": "hi"}
    assert _key({**body, "store": False}, operation="responses") != _key(body, operation="responses")


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2},
        {"audio": {"voice": "alloy", "format": "wav"}},
        {"modalities": ["text", "audio"]},
        {"conversation": "conv_123"},
        {"background": True},
        {"temperature": float("nan")},
        {"file": b"RIFF...."},
        {"file": io.BytesIO(b"data")},
        {"file": ("speech.mp3", b"ID3")},
    ],
)
def test_uncacheable_requests_have_no_key(extra: dict[str, Any]) -> None:
    """Several choices, audio, server-side state and non-JSON bodies are never cached."""
    assert request_key("chat.completions", _chat(**extra), _scope()) is None


@FEW
@given(a=st.lists(OPTIONAL_TEXT, max_size=4), b=st.lists(OPTIONAL_TEXT, max_size=4))
def test_tenant_selectors_separate_scopes(a: list[str | None], b: list[str | None]) -> None:
    """Different selector lists (headers, query) give different scopes; equal ones the same."""
    assume(a != b)
    assert _scope(selectors=a) != _scope(selectors=b)
    assert _scope(selectors=a) == _scope(selectors=list(a))
