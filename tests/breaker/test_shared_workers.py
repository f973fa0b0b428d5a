"""Shared breakers across worker processes (several threads each) against one fake upstream."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from resilient_openai.testing import FakeUpstream, Ok, Status

from .conftest import PrivateRedis

WORKER = Path(__file__).with_name("_worker.py")
#: What a worker reports: ``sent``, ``refused``, and ``calls`` as ``[start, kind, seconds]``.
Report = dict[str, Any]


def _fleet(
    redis_url: str,
    namespace: str,
    base_url: str,
    *,
    workers: int = 4,
    threads: int = 1,
    seconds: float = 1.0,
    at: tuple[float, Callable[[], None]] | None = None,
) -> list[Report]:
    """Run ``workers`` processes of ``threads`` callers each for ``seconds``, all started at once;
    ``at = (delay, action)`` runs ``action`` in the test ``delay`` seconds after the start."""
    argv = [sys.executable, str(WORKER), redis_url, namespace, base_url, str(seconds), str(threads)]
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        if at is not None:
            delay, action = at
            time.sleep(delay)
            action()
        return [json.loads(proc.communicate(timeout=30)[0]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()


def _kinds(reports: list[Report]) -> set[str]:
    return {kind for report in reports for _, kind, _ in report["calls"]}


def test_four_workers_pay_fail_max_once_and_probe_once_per_open_period(
    redis_url: str, namespace: str
) -> None:
    """4 processes x 100 calls/s for 1 s: ~fail_max + 2 probes reach the upstream, not 4 x that."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    with upstream.serve() as base_url:
        results = _fleet(redis_url, namespace, base_url)
    hits = upstream.count()
    assert sum(r["sent"] for r in results) == hits
    assert sum(r["refused"] for r in results) > 200
    # fail_max (5) + one probe after the 0.3 s break + one after the 0.6 s break, plus at most one
    # call per other worker already in flight when the circuit tripped. Per-process breakers: 4 x 7.
    assert 6 <= hits <= 7 + 3, hits


def test_every_worker_is_back_on_the_primary_soon_after_it_recovers(redis_url: str, namespace: str) -> None:
    """4 workers x 3 threads: the outage costs the fleet ~fail_max + a probe; once the upstream
    answers again, the next probe closes the circuit for every worker and every thread."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    recovered: list[int] = []

    def recover() -> None:
        recovered.append(upstream.count())
        upstream.set_default("m", Ok("back"))

    with upstream.serve() as base_url:
        results = _fleet(redis_url, namespace, base_url, threads=3, seconds=1.4, at=(0.4, recover))
    assert _kinds(results) <= {"ok", "failed", "refused"}
    # fail_max + the first probe (0.3 s break), plus calls of the other 11 callers in flight
    # when the circuit tripped or sent before the trip reached their worker. A breaker per
    # process would pay 4 x (5 + 1) and more.
    assert recovered[0] <= 20, recovered
    # The second probe goes out when the 0.6 s break ends (~1 s in); its success closes the
    # circuit in Redis and every worker hears of it: each is answered again well before the end.
    for report in results:
        first_ok = min(start for start, kind, _ in report["calls"] if kind == "ok")
        assert first_ok < 1.3, first_ok


def test_redis_killed_mid_run_leaves_each_worker_deciding_alone(private_redis: PrivateRedis) -> None:
    """Redis dies while the fleet's circuit is open: no caller sees a Redis error or waits on it,
    and each worker keeps protecting the upstream with its local breaker (on_unavailable=local)."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    killed_after: list[int] = []

    def kill() -> None:
        """Once the fleet's circuit is open in Redis and the workers heard of it (< 100 ms)."""
        admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
        deadline = time.monotonic() + 5
        while not any(admin.hget(key, "state") == "open" for key in admin.scan_iter("killed:breaker:*")):
            assert time.monotonic() < deadline, "the fleet's circuit never opened"
            time.sleep(0.005)
        admin.close()
        time.sleep(0.15)
        killed_after.append(upstream.count())
        private_redis.stop()

    with upstream.serve() as base_url:
        results = _fleet(private_redis.url, "killed", base_url, threads=2, seconds=1.2, at=(0.0, kill))
    assert _kinds(results) <= {"failed", "refused"}
    # No call waits on the dead Redis: the slowest one is far below a connect timeout.
    slowest = max(seconds for report in results for _, _, seconds in report["calls"])
    assert slowest < 0.5, slowest
    assert killed_after[0] <= 5 + 1 + 7, killed_after
    # Alone, each worker starts from the open circuit it last saw and probes once per break
    # (twice in the second left), plus a call in flight: never fail_max again (4 x 7 would be).
    after = upstream.count() - killed_after[0]
    assert after <= 4 * 3, after
    refused = sum(report["refused"] for report in results)
    assert refused > 5 * upstream.count(), (refused, upstream.count())
