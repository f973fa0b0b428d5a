"""The FastAPI example (examples/fastapi_app.py) against the fake upstream: /chat, /health, /metrics."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import openai
import pytest
from fastapi.testclient import TestClient

from resilient_openai import ConfigError, breakers, health, resilient
from resilient_openai.testing import FakeUpstream, Ok, Status

from .conftest import API_KEY, BASE_URL


def _load_example() -> ModuleType:
    """``examples/fastapi_app.py``, loaded from its path: ``examples`` is not a package."""
    name = "fastapi_app"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import fastapi_app
else:
    fastapi_app = _load_example()

MODEL = fastapi_app.DEFAULT_MODEL
# No retries and a breaker that opens at the first failure, without fallbacks.
FRAGILE = """
[retry]
rules = {}

[breaker]
fail_max = 1
break_duration = 60.0
"""


@pytest.fixture
def upstream() -> FakeUpstream:
    """The fake OpenAI upstream (on its own fake clock: its waits never sleep)."""
    return FakeUpstream()


@pytest.fixture
def no_policy_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment names no policy file: the built-in policy applies."""
    monkeypatch.delenv(fastapi_app.POLICY_ENV, raising=False)


@pytest.fixture
def fragile_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment names a policy file whose breaker opens at the first failure."""
    path = tmp_path / "fragile.toml"
    path.write_text(FRAGILE)
    monkeypatch.setenv(fastapi_app.POLICY_ENV, str(path))


def _serve(upstream: FakeUpstream) -> Iterator[TestClient]:
    app = fastapi_app.create_app(transport=upstream.async_transport(), api_key=API_KEY, base_url=BASE_URL)
    with TestClient(app) as client:  # runs the lifespan: start-up builds the resilient client
        yield client


@pytest.fixture
def service(upstream: FakeUpstream, no_policy_file: None) -> Iterator[TestClient]:
    """The app with the built-in policy, started, talking to the fake upstream."""
    yield from _serve(upstream)


@pytest.fixture
def fragile_service(upstream: FakeUpstream, fragile_policy_file: None) -> Iterator[TestClient]:
    """The app with the fragile policy file, started, talking to the fake upstream."""
    yield from _serve(upstream)


def test_chat_answers_with_its_provenance(service: TestClient, upstream: FakeUpstream) -> None:
    """A healthy upstream: the answer, from the upstream, with the model asked for and no reason."""
    upstream.set_default(MODEL, Ok("hello there"))
    reply = service.post("/chat", json={"prompt": "Say hello."})
    assert reply.status_code == 200
    assert reply.json() == {
        "answer": "hello there",
        "provenance": {"source": "upstream", "model": MODEL, "reason": None},
    }
    assert upstream.count(model=MODEL) == 1


def test_chat_says_when_a_fallback_answered(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The primary fails: the fallback model's answer comes back labelled with who and why."""
    upstream.set_default(MODEL, Status(503))
    upstream.set_default("gpt-4o", Ok("from the backup"))
    policy = tmp_path / "fallback.toml"
    policy.write_text(FRAGILE + '\n[fallback.routes."*"]\nsteps = [{ kind = "model", model = "gpt-4o" }]\n')
    app = fastapi_app.create_app(
        policy=policy, transport=upstream.async_transport(), api_key=API_KEY, base_url=BASE_URL
    )
    with TestClient(app) as client:
        reply = client.post("/chat", json={"prompt": "Say hello."})
    assert reply.status_code == 200
    assert reply.json() == {
        "answer": "from the backup",
        "provenance": {"source": "fallback_model", "model": "gpt-4o", "reason": "server_error"},
    }


def test_built_in_policy_answers_an_outage_with_its_canned_reply(
    service: TestClient, upstream: FakeUpstream
) -> None:
    """Without a policy file, an exhausted quota is answered by the built-in canned reply."""
    upstream.set_default(MODEL, Status(429, code_str="insufficient_quota"))  # never retried
    reply = service.post("/chat", json={"prompt": "Say hello."})
    assert reply.status_code == 200
    assert reply.json() == {
        "answer": "The assistant is unavailable right now (quota_exhausted).",
        "provenance": {"source": "canned", "model": "resilient-openai/canned", "reason": "quota_exhausted"},
    }


def test_a_request_the_upstream_refuses_is_a_400(service: TestClient, upstream: FakeUpstream) -> None:
    """The upstream's 400 is not an outage: no fallback, the caller hears it, with the provenance."""
    upstream.set_default(MODEL, Status(400, message="messages too long"))
    refused = service.post("/chat", json={"prompt": "Say hello."})
    assert refused.status_code == 400
    body = refused.json()
    assert body["error"] == "BadRequestError"
    assert "messages too long" in body["message"]
    assert body["provenance"] == {"source": None, "model": None, "reason": "caller_error"}


def test_metrics_show_our_counters_after_a_call(service: TestClient, upstream: FakeUpstream) -> None:
    """After one answered call, /metrics counts it, in the Prometheus text format."""
    service.post("/chat", json={"prompt": "Say hello."})
    metrics = service.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    line = next(
        line for line in metrics.text.splitlines() if line.startswith("resilient_openai_calls_total{")
    )
    assert 'operation="chat.completions"' in line
    assert 'source="upstream"' in line
    assert 'verdict="success"' in line
    assert line.endswith(" 1.0")
    assert "resilient_openai_call_duration_seconds_bucket{" in metrics.text


def test_health_is_ok_before_any_failure(service: TestClient) -> None:
    """A fresh service is healthy, strict or not, and says which process answered."""
    report = service.get("/health").json()
    assert report["status"] == "ok"
    assert report["pid"] == os.getpid()
    assert service.get("/health", params={"strict": "true"}).status_code == 200


def test_health_reports_an_opened_breaker(fragile_service: TestClient, upstream: FakeUpstream) -> None:
    """One upstream failure opens the circuit: /health says degraded, and names the open breaker."""
    upstream.set_default(MODEL, Status(503))
    failed = fragile_service.post("/chat", json={"prompt": "Say hello."})
    assert failed.status_code == 502
    report = fragile_service.get("/health")
    assert report.status_code == 200  # the process is fine: it is the upstream that fails
    body = report.json()
    assert body["status"] == "degraded"
    [breaker] = body["breakers"]
    assert breaker["state"] == "open"
    assert breaker["name"].endswith(f":{MODEL}")
    assert breaker["last_failure"] == "server_error"
    assert fragile_service.get("/health", params={"strict": "true"}).status_code == 503


def test_open_circuit_is_a_503_with_retry_after(fragile_service: TestClient, upstream: FakeUpstream) -> None:
    """With the circuit open, /chat answers at once with 503 and when to come back."""
    upstream.set_default(MODEL, Status(503))
    fragile_service.post("/chat", json={"prompt": "Say hello."})
    rejected = fragile_service.post("/chat", json={"prompt": "Say hello."})
    assert rejected.status_code == 503
    assert rejected.json()["error"] == "CircuitOpenError"
    assert 1 <= int(rejected.headers["retry-after"]) <= 60
    assert upstream.count(model=MODEL) == 1


def test_redaction_is_installed_for_the_life_of_the_app(
    upstream: FakeUpstream, no_policy_file: None, caplog: pytest.LogCaptureFixture
) -> None:
    """While the app runs, the SDK's loggers cannot print a key; after shut-down the hook is gone."""
    secret = "sk-proj-abcdefghijklmnopqrstuvwx"
    logger = logging.getLogger("openai._base_client")
    caplog.set_level(logging.INFO, logger="openai")
    app = fastapi_app.create_app(transport=upstream.async_transport(), api_key=API_KEY, base_url=BASE_URL)
    with TestClient(app):
        logger.info("Authorization: Bearer %s", secret)
    logger.info("after: %s", secret)
    during, after = (record.getMessage() for record in caplog.records[-2:])
    assert secret not in during
    assert "[REDACTED]" in during
    assert secret in after


SHARED_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shared.toml"


def test_the_shared_example_builds_a_client_sharing_on_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/shared.toml (this app's policy under several workers) makes a client whose
    breakers and cache go through Redis, once its two variables are set."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RESILIENT_CACHE_SECRET", "s" * 32)
    client = resilient(openai.OpenAI(api_key="sk-test"), SHARED_EXAMPLE)
    try:
        assert breakers(client).link is not None
        assert health(client)["cache"]["shared"] is not None
    finally:
        client.close()


def test_the_shared_example_names_its_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without REDIS_URL the shared example refuses to start, naming the key and the variable."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("RESILIENT_CACHE_SECRET", "s" * 32)
    with pytest.raises(ConfigError) as refused:
        resilient(openai.OpenAI(api_key="sk-test"), SHARED_EXAMPLE)
    assert refused.value.problems == ("shared.url_env: the variable 'REDIS_URL' is not set",)
