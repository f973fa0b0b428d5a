"""A FastAPI service that answers chat requests through a resilient ``AsyncOpenAI`` client.

Run it from this directory with ``OPENAI_API_KEY`` set::

    RESILIENT_OPENAI_POLICY=resilience.toml uvicorn fastapi_app:app

``RESILIENT_OPENAI_POLICY`` names a policy file (TOML, or YAML with the ``yaml`` extra); without
it the service uses :data:`BUILT_IN_POLICY`. The client is built at start-up (in the lifespan,
never at import), shared by every request of the process, and closed at shut-down; log
redaction is installed then too.

Several workers, one view of the upstream. With ``--workers 4`` each worker process runs the
lifespan and builds its own client; the policy's ``[shared]`` section (``shared.toml`` has
one) makes them share one breaker per target and the answer cache through Redis, so an outage
costs the fleet ``fail_max`` requests, not 4 x ``fail_max``, and a worker that never saw a
request can still answer it from the cache::

    REDIS_URL=redis://127.0.0.1:6379/0 RESILIENT_CACHE_SECRET="$(openssl rand -hex 32)" \
    RESILIENT_OPENAI_POLICY=shared.toml uvicorn fastapi_app:app --workers 4

``REDIS_URL`` and ``RESILIENT_CACHE_SECRET`` are the variables ``[shared]`` names (``url_env``,
``key_secret_env``; the secret must be the same in every worker). A Redis that does not answer
is no error: each worker then keeps its own breakers until it does. Without Redis at all, leave
``[shared]`` out of the policy. ``/health`` says which worker answered (``pid``).

Routes:

``POST /chat``
    ``{"prompt": "...", "model": "gpt-4o-mini"}`` returns ``{"answer": "...", "provenance":
    {"source": ..., "model": ..., "reason": ...}}``: who answered (``upstream``,
    ``fallback_model``, ``cache``, ``canned``...), the model that really answered, and why the
    chain left the primary (``null`` when it did not). When nothing could answer, the error is
    ``{"error", "message", "provenance"}`` with 400 (the request cannot succeed as written: refused
    before sending, or by the upstream), 503 and ``Retry-After`` (the circuit is open) or 502 (the
    upstream failed). Messages go through :func:`~resilient_openai.observe.redact.redact`.
``GET /health``
    :func:`resilient_openai.health`: every breaker's state and the cache's counters, and the
    ``pid`` of the worker process that answered (shared breakers read the same in every one;
    a worker lists a target's breaker once it has called that target). Always 200,
    also when ``status`` is ``"degraded"``: an open breaker means the *upstream* is failing, not
    this process, which still answers through its fallbacks; a load balancer that took every
    instance out of rotation during an upstream outage would turn a degraded service into a
    dead one. Monitors that want a failing status ask ``/health?strict=true``: 503 when degraded.
``GET /metrics``
    The :class:`~resilient_openai.observe.prometheus.PrometheusListener`'s counters, gauge and
    histogram in the Prometheus text format. The app keeps them in a registry of its own (not
    prometheus_client's global one), so several apps can live in one process, as in tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from resilient_openai import (
    CircuitOpenError,
    FallbackPolicy,
    FallbackStep,
    Policy,
    Provenance,
    RequestRejectedError,
    Route,
    health,
    provenance,
    resilient,
)
from resilient_openai.observe.prometheus import PrometheusListener
from resilient_openai.observe.redact import install_redaction, redact

__all__ = ["BUILT_IN_POLICY", "DEFAULT_MODEL", "POLICY_ENV", "ChatReply", "ChatRequest", "app", "create_app"]

#: The environment variable naming the policy file.
POLICY_ENV = "RESILIENT_OPENAI_POLICY"
DEFAULT_MODEL = "gpt-4o-mini"

#: Used when no policy is given: production defaults, and for every model the last good answer
#: to the same request, then a fixed reply, once the model's own retries are spent.
BUILT_IN_POLICY = Policy(
    fallback=FallbackPolicy(
        routes={
            "*": Route(
                steps=(
                    FallbackStep(kind="cache"),
                    FallbackStep(kind="canned", text="The assistant is unavailable right now ({reason})."),
                )
            )
        }
    )
)


class ChatRequest(BaseModel):
    """What ``POST /chat`` takes."""

    prompt: str = Field(min_length=1)
    model: str = DEFAULT_MODEL


class Origin(BaseModel):
    """Where an answer came from: the part of the provenance a client of this service needs."""

    source: str | None
    model: str | None
    reason: str | None

    @classmethod
    def of(cls, record: Provenance | None) -> Origin:
        """The origin a provenance tells (all None for an object the chain did not produce)."""
        if record is None:
            return cls(source=None, model=None, reason=None)
        source = record.source.value if record.source is not None else None
        return cls(source=source, model=record.model, reason=record.reason)


class ChatReply(BaseModel):
    """What ``POST /chat`` answers."""

    answer: str
    provenance: Origin


@dataclass
class _Service:
    """What start-up builds and every request shares."""

    client: openai.AsyncOpenAI
    registry: CollectorRegistry


def _policy(given: Policy | str | os.PathLike[str] | None) -> Policy:
    """The policy given, else the file :data:`POLICY_ENV` names, else the built-in one."""
    if given is None:
        given = os.environ.get(POLICY_ENV) or BUILT_IN_POLICY
    if isinstance(given, Policy):
        return given
    return Policy.from_file(Path(given))


def _error_status(error: Exception) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) for the error the chain answered a call with."""
    if isinstance(error, RequestRejectedError | openai.BadRequestError):
        return 400, {}
    if isinstance(error, CircuitOpenError):
        wait = error.retry_after
        return 503, {} if wait is None else {"Retry-After": str(max(1, math.ceil(wait)))}
    return 502, {}


def create_app(
    *,
    policy: Policy | str | os.PathLike[str] | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
) -> FastAPI:
    """The service. ``policy`` overrides :data:`POLICY_ENV`; ``transport`` replaces the network.

    ``api_key`` and ``base_url`` default to the SDK's own (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``);
    tests pass a fake upstream's ``async_transport()``. Nothing is built before start-up.
    """
    service: _Service | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal service
        uninstall = install_redaction()  # first: nothing may log a key before it is in place
        try:
            registry = CollectorRegistry()
            chosen = _policy(policy)  # a bad file fails start-up here
            http_client = httpx2.AsyncClient(transport=transport) if transport is not None else None
            raw = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, http_client=http_client)
            client = resilient(raw, chosen, listeners=(PrometheusListener(registry),))
            service = _Service(client, registry)
            try:
                yield
            finally:
                await service.client.close()
        finally:
            service = None
            uninstall()

    def running() -> _Service:
        if service is None:
            raise RuntimeError("the app has not started (use it through its lifespan)")
        return service

    app = FastAPI(title="resilient-openai example", lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> ChatReply:
        """Answer ``prompt`` with ``model``, or with whatever the policy falls back to."""
        completion = await running().client.chat.completions.create(
            model=request.model, messages=[{"role": "user", "content": request.prompt}]
        )
        answer = completion.choices[0].message.content if completion.choices else None
        return ChatReply(answer=answer or "", provenance=Origin.of(provenance(completion)))

    @app.exception_handler(openai.OpenAIError)
    async def nothing_answered(_: Request, error: Exception) -> JSONResponse:
        """The chain's own answer was an error: say which, why, and what was tried."""
        status, headers = _error_status(error)
        body = {
            "error": type(error).__name__,
            "message": redact(str(error)),
            "provenance": Origin.of(provenance(error)).model_dump(),
        }
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/health")
    async def health_route(strict: bool = False) -> JSONResponse:
        """Breakers and cache; 503 only with ``strict=true`` and a breaker not closed."""
        snapshot = health(running().client) | {"pid": os.getpid()}
        degraded = snapshot["status"] != "ok"
        return JSONResponse(snapshot, status_code=503 if strict and degraded else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        """The resilience metrics in the Prometheus text format."""
        return Response(generate_latest(running().registry), media_type=CONTENT_TYPE_LATEST)

    return app


#: For ``uvicorn fastapi_app:app``.
app = create_app()
