"""Question 8: many workers, one view of the upstream: per-process vs shared breakers vs pybreaker+Redis.

Three variants run at once, each with 4 worker processes (``spawn``) calling its own loopback
fake upstream at a steady rate (default 5 calls/s each, the workers a quarter period apart);
from ``outage_start`` to ``outage_end`` the upstream answers 503 to everything. Every breaker
trips after 5 consecutive failures and breaks for 2 s (not growing); retries are off, so every
request the upstream sees is a call's one attempt or a probe. The variants:

- ``per-process``: ``resilient(client)`` without ``[shared]``: each worker has its own breaker;
- ``shared (Redis)``: the same policy plus ``[shared]``: one breaker for the fleet in Redis;
- ``pybreaker + CircuitRedisStorage``: a plain ``pybreaker.CircuitBreaker`` per worker around
  the raw SDK, its state in Redis through pybreaker's own storage (a Redis read per call).

Each worker stamps its requests (``x-fleet-worker``), so the upstream's record tells who sent
what, when. The success-path cost of each mode is measured separately, in process, interleaved.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import openai
import pybreaker

from resilient_openai import SYSTEM_CLOCK, CircuitOpenError, Policy, resilient
from resilient_openai.testing import FakeUpstream, Ok, Status

from ._common import (
    MESSAGES,
    MODEL,
    goal_verdict,
    inprocess_client,
    interleaved,
    loopback_client,
    markdown_table,
    server_fixes,
    spread,
)

__all__ = [
    "GOAL",
    "FleetConfig",
    "FleetResult",
    "VariantSummary",
    "headline",
    "measure_success",
    "report",
    "run",
    "summarize",
]

REDIS_URL = "redis://127.0.0.1:6379/0"
HEADER = "x-fleet-worker"
VARIANTS = ("per-process", "shared (Redis)", "pybreaker + CircuitRedisStorage")
#: The shared mode's success path should cost at most this much of the per-process one.
GOAL = 1.02
ANSWERED, FAILED, REFUSED = "answered", "failed", "refused"


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The scenario; the defaults are the published one, ``--quick`` and tests shrink it."""

    workers: int = 4
    rate: float = 5.0
    outage_start: float = 2.0
    outage_end: float = 12.0
    duration: float = 16.0
    fail_max: int = 5
    break_duration: float = 2.0
    #: Success-path measurement: interleaved rounds of ``batch`` calls.
    rounds: int = 60
    batch: int = 20


@dataclass(frozen=True, slots=True)
class FleetResult:
    """What every variant's upstream saw, what its workers' calls ended with, and the success path."""

    config: FleetConfig
    #: Per variant: (worker, seconds from the start) of every request its upstream received.
    requests: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    #: Per variant: (worker, seconds from the start, outcome) of every call: ``ANSWERED``,
    #: ``FAILED`` (the upstream's error) or ``REFUSED`` (the breaker's).
    calls: dict[str, list[tuple[int, float, str]]] = field(default_factory=dict)
    outage: tuple[float, float] = (0.0, 0.0)
    success: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """One variant's line of the table (seconds; ``None`` when it never happened)."""

    variant: str
    during_outage: int
    stopped_after: float | None
    probes: int
    open_periods: float
    first_back: float | None
    all_back: float | None


def _policy(config: FleetConfig, namespace: str | None) -> Policy:
    data: dict[str, Any] = {
        "retry": {"rules": {"server_error": {"attempts": 1}}},
        "breaker": {
            "mode": "consecutive",
            "fail_max": config.fail_max,
            "break_duration": config.break_duration,
            "break_multiplier": 1.0,
            "break_max": config.break_duration,
        },
    }
    if namespace is not None:
        data["shared"] = {"url": REDIS_URL, "namespace": namespace}
    return Policy.from_dict(data)


def _caller(variant: str, config: FleetConfig, base_url: str, namespace: str) -> Callable[[int], object]:
    """A function making one call as worker ``index``."""
    if variant == "pybreaker + CircuitRedisStorage":
        import redis

        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, redis.Redis.from_url(REDIS_URL), namespace=namespace
        )
        breaker = pybreaker.CircuitBreaker(
            fail_max=config.fail_max, reset_timeout=config.break_duration, state_storage=storage
        )
        raw = loopback_client(base_url)

        def call_pybreaker(index: int) -> object:
            headers = {HEADER: str(index)}
            return breaker.call(
                raw.chat.completions.create, model=MODEL, messages=MESSAGES, extra_headers=headers
            )

        return call_pybreaker
    shared = namespace if variant == "shared (Redis)" else None
    client = resilient(loopback_client(base_url), _policy(config, shared))

    def call_resilient(index: int) -> object:
        return client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={HEADER: str(index)}
        )

    return call_resilient


def _worker(
    variant: str,
    index: int,
    config: FleetConfig,
    base_url: str,
    namespace: str,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    """One worker process: warm up, wait for the common start, call at ``rate`` until ``duration``."""
    call = _caller(variant, config, base_url, namespace)
    call(-1)  # open the connection, run the lazy imports; the parent forgets this request
    ready.put(index)
    start.wait()
    t0 = start_time(start)
    period = 1.0 / config.rate
    outcomes: list[tuple[int, float, str]] = []
    turn = 0
    while (at := t0 + (turn + index / config.workers) * period) < t0 + config.duration:
        time.sleep(max(at - time.monotonic(), 0.0))
        try:
            call(index)
            outcome = ANSWERED
        except (CircuitOpenError, pybreaker.CircuitBreakerError):
            outcome = REFUSED  # pybreaker's tripping call says so too, after its request was sent
        except openai.OpenAIError:
            outcome = FAILED
        outcomes.append((index, at - t0, outcome))
        turn += 1
    results.put((variant, outcomes))


def start_time(start: Any) -> float:
    """The common start (``time.monotonic``, the same clock in every process on one machine)."""
    return float(start.t0.value)


class _Start:
    """An event plus the monotonic time it stands for, picklable to spawned workers."""

    def __init__(self, context: Any) -> None:
        self.event = context.Event()
        self.t0 = context.Value("d", 0.0)

    def wait(self) -> None:
        self.event.wait()


def run(config: FleetConfig | None = None) -> FleetResult:
    """Play the outage against every variant's 4 workers at once, then time the success path."""
    config = config or FleetConfig()
    context = multiprocessing.get_context("spawn")
    upstreams = {name: FakeUpstream(clock=SYSTEM_CLOCK) for name in VARIANTS}
    prefix = f"fleet-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    namespaces = {name: f"{prefix}-{position}" for position, name in enumerate(VARIANTS)}
    calls: dict[str, list[tuple[int, float, str]]] = {name: [] for name in VARIANTS}
    with ExitStack() as stack:
        stack.callback(_forget, prefix)
        stack.enter_context(server_fixes())
        urls = {name: stack.enter_context(u.serve()) for name, u in upstreams.items()}
        ready, results, start = context.Queue(), context.Queue(), _Start(context)
        processes = [
            context.Process(
                target=_worker,
                args=(name, index, config, urls[name], namespaces[name], ready, start, results),
                daemon=True,
            )
            for name in VARIANTS
            for index in range(config.workers)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=60)
        for upstream in upstreams.values():
            upstream.reset_counts()
        t0 = time.monotonic() + 0.2
        start.t0.value = t0
        start.event.set()
        for at, fault in ((config.outage_start, Status(503)), (config.outage_end, Ok())):
            time.sleep(max(t0 + at - time.monotonic(), 0.0))
            for upstream in upstreams.values():
                upstream.set_default(MODEL, fault)
        for _ in processes:
            variant, outcomes = results.get(timeout=config.duration + 60)
            calls[variant] += outcomes
        for process in processes:
            process.join(timeout=10)
        requests = {
            name: [(int(r.headers.get(HEADER, "-1")), r.at - t0) for r in u.requests if r.model == MODEL]
            for name, u in upstreams.items()
        }
    success = measure_success(config, rounds=config.rounds, batch=config.batch)
    return FleetResult(config, requests, calls, (config.outage_start, config.outage_end), success)


def _forget(prefix: str) -> None:
    """Delete the keys this run left in Redis."""
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(connection.scan_iter(match=f"{prefix}*"))
        if keys:
            connection.delete(*keys)
    finally:
        connection.close()


def measure_success(config: FleetConfig, *, rounds: int, batch: int) -> dict[str, list[float]]:
    """Seconds per successful call, in process, of local, shared and pybreaker+Redis (interleaved)."""
    upstream = FakeUpstream()
    prefix = f"fleet-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    local = resilient(inprocess_client(upstream), _policy(config, None))
    shared = resilient(inprocess_client(upstream), _policy(config, f"{prefix}-success"))
    import redis

    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis.Redis.from_url(REDIS_URL), namespace=f"{prefix}-pybreaker"
    )
    breaker = pybreaker.CircuitBreaker(fail_max=config.fail_max, state_storage=storage)
    raw = inprocess_client(upstream)
    variants: dict[str, Callable[[], object]] = {
        "per-process": lambda: local.chat.completions.create(model=MODEL, messages=MESSAGES),
        "shared (Redis)": lambda: shared.chat.completions.create(model=MODEL, messages=MESSAGES),
        "pybreaker + CircuitRedisStorage": lambda: breaker.call(
            raw.chat.completions.create, model=MODEL, messages=MESSAGES
        ),
    }
    try:
        return interleaved(variants, rounds=rounds, batch=batch, warmup=batch)
    finally:
        for client in (local, shared, raw):
            client.close()
        time.sleep(0.2)  # the shared breaker reports its last successes in the background
        _forget(prefix)


def summarize(result: FleetResult) -> list[VariantSummary]:
    """One line per variant, from the upstream's record and the workers' outcomes."""
    start, end = result.outage
    config = result.config
    summaries = []
    for variant in VARIANTS:
        during = sorted((w, at) for w, at in result.requests.get(variant, []) if start <= at < end)
        times = sorted(at for _, at in during)
        # A worker has stopped once its calls are refused: its last request before its first
        # refused call is when it stopped sending; after every worker has, what arrives are probes.
        stops = []
        for worker in range(config.workers):
            refused = [
                at
                for w, at, o in result.calls.get(variant, [])
                if w == worker and at >= start and o == REFUSED
            ]
            sent = [at for w, at in during if w == worker]
            # a call's request reaches the upstream a moment after the call begins: 0.05 s slack
            first_refused = min(refused, default=end)
            stops.append(max((at for at in sent if at <= first_refused + 0.05), default=start))
        stopped = max(stops) - times[0] if times else None
        probes = sum(at > max(stops) for at in times)
        periods = max(end - max(stops), 0.0) / config.break_duration if times else 0.0
        back = [
            min(
                (
                    at
                    for w, at, o in result.calls.get(variant, [])
                    if w == worker and o == ANSWERED and at >= end
                ),
                default=None,
            )
            for worker in range(config.workers)
        ]
        found = [b - end for b in back if b is not None]
        summaries.append(
            VariantSummary(
                variant=variant,
                during_outage=len(during),
                stopped_after=stopped,
                probes=probes,
                open_periods=periods,
                first_back=min(found) if found else None,
                all_back=max(found) if len(found) == config.workers else None,
            )
        )
    return summaries


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def report(result: FleetResult) -> str:
    """The Markdown section for RESULTS.md."""
    config = result.config
    success = result.success
    local = success.get("per-process", [])
    rows = []
    for s in summarize(result):
        values = success.get(s.variant, [])
        if values and local:
            ratio = spread([v / b for v, b in zip(values, local, strict=True)])
            median = spread(values).median * 1e6
            cost = f"{median:.0f} us, {ratio.median:.3f}x ({ratio.low:.3f}-{ratio.high:.3f})"
        else:
            cost = "-"
        per_period = f"{s.probes / s.open_periods:.1f}" if s.open_periods >= 1 else "-"
        rows.append(
            [
                s.variant,
                str(s.during_outage),
                _seconds(s.stopped_after),
                f"{s.probes} ({per_period})",
                f"{_seconds(s.first_back)} / {_seconds(s.all_back)}",
                cost,
            ]
        )
    table = markdown_table(
        [
            "variant",
            "requests to failing upstream during outage",
            "first failure -> every worker stopped, s",
            "probes after that (per open period)",
            "end of outage -> back on primary, first / every worker, s",
            "success path, in process: us/call, ratio to per-process (IQR)",
        ],
        rows,
    )
    start, end = result.outage
    return "\n".join(
        [
            f"## 8. Many workers, one view of the upstream ({config.workers} processes per variant)",
            "",
            f"{config.workers} worker processes per variant, {config.rate:g} calls/s each (a quarter period "
            f"apart), all three variants at once against their own loopback upstream for "
            f"{config.duration:g} s; "
            f"the upstream answered 503 from t = {start:g} s to {end:g} s. Breakers: {config.fail_max} "
            f"consecutive failures, {config.break_duration:g} s break (not growing), no retries. "
            "How to read it: the fewer requests during the outage the better; the floor for a shared "
            f"breaker is `fail_max` ({config.fail_max}) plus one probe per open period for the whole fleet, "
            f"and per-process breakers pay {config.workers} x that. *Every worker stopped* is from the "
            "first failed request to the last request any worker sent before its own calls were refused "
            f"(to the resolution of the calls' spacing, {1 / config.rate / config.workers:.2f} s); *probes* "
            "are requests after that, and *per open period* divides them by the rest of the outage over "
            "the break. *Back on primary* is when the first, then every, worker's call was answered by "
            "the upstream again (call arrival times, so at most a period late). The last column is "
            f"measured separately: {config.rounds} interleaved rounds of {config.batch} successful calls "
            "in process (no socket), the ratio per round to the per-process breaker; pybreaker's "
            "storage reads Redis on every call.",
            "",
            table,
            "",
        ]
    )


def headline(result: FleetResult) -> list[list[str]]:
    """The goal row for the summary: ``[what, measured, goal, verdict]``."""
    local, shared = result.success.get("per-process"), result.success.get("shared (Redis)")
    if not local or not shared:
        return []
    ratio = spread([a / b for a, b in zip(shared, local, strict=True)]).median
    return [
        [
            "8. shared breakers' success path, in process",
            f"{ratio:.3f}x per-process",
            f"<= {GOAL:.2f}x",
            goal_verdict(ratio, GOAL, at_most=True),
        ]
    ]
