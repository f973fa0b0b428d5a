"""The benchmarks still run: each one's core at tiny sizes (no timing is asserted, ever)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import redis

from resilient_openai.testing import FakeUpstream

# benchmarks/ is a top-level package of the repository, not part of the installed library.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import concurrency, fleet, memory, outage, rejection, scenarios, success_path
from benchmarks._common import server_fixes


def test_success_path_measures_every_variant() -> None:
    """The four success-path variants run in process and the report has a row for each."""
    samples = success_path.measure("in-process", rounds=2, batch=2, warmup=1)
    assert set(samples) == {"raw", "resilient", "full chain", "hand-rolled"}
    assert all(len(values) == 2 for values in samples.values())
    text = success_path.report(success_path.SuccessPathResult({"in-process": samples}, 2, 2))
    assert "in-process: full chain" in text


def test_concurrency_drives_threads_and_tasks() -> None:
    """Threads and tasks run against a loopback upstream and report a throughput per variant."""
    with server_fixes(), FakeUpstream().serve() as base_url:
        threads = concurrency.measure_threads(base_url, threads=2, seconds=0.05, rounds=1, warmup=0.01)
        tasks = asyncio.run(concurrency.measure_tasks(base_url, tasks=3, seconds=0.05, rounds=1, warmup=0.01))
    assert set(threads) == {"raw", "resilient", "pybreaker.call"}
    assert set(tasks) == {"raw", "resilient"}
    result = concurrency.ConcurrencyResult(threads, tasks, 2, 3, 0.0, 0.05, 1)
    assert "3 tasks: resilient" in concurrency.report(result)


def test_rejection_sends_nothing() -> None:
    """Rejections are timed per call and never reach the upstream (measure checks it)."""
    samples = rejection.measure(calls=20, batch=10, warmup=2)
    assert all(len(values) == 20 for values in samples.values())
    assert "post() -> CircuitOpenError" in rejection.report(rejection.RejectionResult(samples))


def test_outage_runs_all_variants_and_draws(tmp_path: Path) -> None:
    """A shrunken outage runs the four variants at once, summarizes them and draws the picture."""
    config = outage.OutageConfig(
        calls=6,
        rate=40.0,
        outage_start=0.04,
        outage_end=0.09,
        break_duration=0.05,
        raw_max_retries=0,
        backoff=0.01,
    )
    result = outage.run(config, workers=16)
    summaries = outage.summarize(result)
    assert [s.variant for s in summaries] == list(outage.VARIANTS)
    assert all(s.calls == 6 for s in summaries)
    outage.plot(result, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 0
    assert "timeline.png" in outage.report(result, "timeline.png")


def test_memory_keeps_the_cache_within_bounds() -> None:
    """The cache fill respects both bounds, and a short run reads memory at each interval."""
    bound = memory.cache_at_bounds("bytes", max_entries=50, max_bytes=4_000, offered=100, sizes=(100, 300))
    assert bound.entries <= 50
    assert bound.bytes <= 4_000
    run = memory.long_run(calls=30, every=10, max_entries=5, traced=True)
    assert [r.calls for r in run.readings] == [10, 20, 30]
    assert all(r.cache_entries <= 5 for r in run.readings)
    assert "## 5. Memory" in memory.report(memory.MemoryResult([bound], run, run))


def test_scenarios_play_every_client_in_every_scenario() -> None:
    """The quick scenario table has a cell per scenario and client, each call accounted for."""
    result = scenarios.run(timeout=0.1, sequence=2)
    played = scenarios.scenarios(0.1, 2)
    assert [(c.scenario.name, c.client) for c in result.cells] == [
        (s.name, client) for s in played for client in scenarios.CLIENTS
    ]
    assert all(len(c.got) == len(c.seconds) == c.scenario.calls for c in result.cells)
    assert "| **silent primary** | raw SDK |" in scenarios.report(result)


def test_fleet_summarizes_what_the_upstream_saw() -> None:
    """Two workers, one upstream's record: requests during the outage, stop, probes, recovery.

    (The worker processes themselves take seconds to spawn: ``python -m benchmarks --quick`` runs them.)
    """
    config = fleet.FleetConfig(workers=2, rate=10.0, outage_start=1.0, outage_end=3.0, break_duration=0.5)
    # Worker 0 fails at 1.0 and 1.1, worker 1 at 1.05; both are refused from 1.2 on; one probe at
    # 2.0, then both are answered from 3.0 (worker 1 from 3.05).
    requests = [(0, 1.0), (1, 1.05), (0, 1.1), (0, 2.0), (0, 3.0), (1, 3.05)]
    calls: list[tuple[int, float, str]] = [
        (0, 1.0, fleet.FAILED),
        (1, 1.05, fleet.FAILED),
        (0, 1.1, fleet.FAILED),
        (1, 1.15, fleet.REFUSED),
        (0, 1.2, fleet.REFUSED),
        (0, 2.0, fleet.FAILED),
        (0, 3.0, fleet.ANSWERED),
        (1, 3.05, fleet.ANSWERED),
    ]
    variant = fleet.VARIANTS[1]
    result = fleet.FleetResult(config, {variant: requests}, {variant: calls}, (1.0, 3.0))
    summary = {s.variant: s for s in fleet.summarize(result)}[variant]
    assert summary.during_outage == 4
    assert summary.stopped_after == pytest.approx(0.1)
    assert summary.probes == 1
    assert summary.first_back == 0.0
    assert summary.all_back == pytest.approx(0.05)
    assert "| shared (Redis) | 4 | 0.10 | 1 (0.3) | 0.00 / 0.05 | - |" in fleet.report(result)


def test_fleet_success_path_measures_every_mode() -> None:
    """Local, shared and pybreaker+Redis success paths are timed in process (needs the test Redis)."""
    try:
        redis.Redis.from_url(fleet.REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis answers at {fleet.REDIS_URL}")
    samples = fleet.measure_success(fleet.FleetConfig(), rounds=2, batch=2)
    assert set(samples) == set(fleet.VARIANTS)
    assert all(len(values) == 2 for values in samples.values())
    result = fleet.FleetResult(fleet.FleetConfig(), success=samples)
    assert fleet.headline(result)[0][2] == "<= 1.02x"
