"""``resilient-openai demo --workers N``: worker processes against one upstream, breakers on Redis."""

from __future__ import annotations

import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from resilient_openai._demo import DEMO_MODEL, DemoConfig, DemoResult, breaker_timeline, parse_scenario
from resilient_openai._demo_workers import WorkersRun
from resilient_openai.cli import build_app, write_timeline

from .conftest import REDIS_URL

#: The outage first, so no answer of a healthy phase still in flight resets the failure count.
SCENARIO = "storm:0.8,recovery:0.3"
WORKERS = 2
FAIL_MAX = 5  # the demo policy's
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config() -> DemoConfig:
    return DemoConfig(phases=parse_scenario(SCENARIO), rate=40.0, concurrency=8)


@dataclass(frozen=True)
class SharedRun:
    """A finished workers run on the test Redis, and the namespace it was given."""

    result: DemoResult
    namespace: str


@pytest.fixture(scope="module")
def shared_run() -> SharedRun:
    """Two workers through the short outage, breakers shared in a namespace of this module's own."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    namespace = f"test-demo-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", REDIS_URL)
        run = WorkersRun(_config(), WORKERS, namespace=namespace)
        assert run.shared
        return SharedRun(run.run(), namespace)


def _unused_url() -> str:
    """A Redis URL where nothing listens (a port just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_every_worker_row_opens_during_the_outage_together(shared_run: SharedRun) -> None:
    """One row per worker; each opens in the storm, all within 0.1 s of each other (one shared breaker)."""
    result = shared_run.result
    storm = result.phases[0]
    rows = dict(breaker_timeline(result))
    assert len(rows) == WORKERS
    first_open = []
    for label, spans in rows.items():
        opened = [start for start, _, state in spans if state == "open" and storm.start <= start < storm.end]
        assert opened, (label, spans)
        first_open.append(opened[0])
    assert max(first_open) - min(first_open) < 0.1, rows


def test_shared_breaker_lets_fail_max_requests_through_for_the_fleet(shared_run: SharedRun) -> None:
    """The failing upstream sees about fail_max requests from all workers together, not fail_max each."""
    hits = shared_run.result.outage_requests()
    assert set(hits) <= set(range(WORKERS))
    # fail_max, plus at most one call per worker already sent when the circuit opened; the break
    # (3 s) outlasts the storm, so no probe. Per-process breakers: at least WORKERS x fail_max.
    assert FAIL_MAX <= hits.total() <= FAIL_MAX + WORKERS, hits
    assert hits.total() < WORKERS * FAIL_MAX


def test_every_worker_calls_and_every_call_ends_documented(shared_run: SharedRun) -> None:
    """Both workers made calls, every one answered or a documented error, and their breakers are reported."""
    result = shared_run.result
    assert result.ok, result.bug_reports
    assert {record.worker for record in result.records} == set(range(WORKERS))
    assert [w.index for w in result.workers] == list(range(WORKERS))
    assert len({w.pid for w in result.workers}) == WORKERS
    assert all(w.done and w.breakers for w in result.workers)
    assert result.shared
    assert shared_run.namespace in result.sharing


def test_the_run_deletes_its_namespace(shared_run: SharedRun) -> None:
    """After the run, no key is left under the namespace it shared its breakers in."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(f"{shared_run.namespace}:*")) == []
    finally:
        client.close()


def test_workers_timeline_png(shared_run: SharedRun, tmp_path: Path) -> None:
    """The workers run draws its timeline like the one-process demo."""
    path = write_timeline(shared_run.result, tmp_path / "workers.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_without_redis_says_so_and_each_worker_pays_fail_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Redis answers: the screen says every worker keeps its own breakers, and each pays fail_max."""
    monkeypatch.setenv("REDIS_URL", _unused_url())
    png = tmp_path / "per-process.png"
    args = ["demo", "--workers", str(WORKERS), "--scenario", SCENARIO, "--rate", "40", "--no-live"]
    result = CliRunner().invoke(build_app(), [*args, "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "Redis did not answer" in result.output
    assert "every worker keeps its own breakers (per process)" in result.output
    found = re.search(r"requests to the failing upstream \(.*?\): (\d+) in total \((.*?)\)", result.output)
    assert found, result.output
    per_worker = [int(n) for n in re.findall(r"worker \d+: (\d+)", found[2])]
    assert len(per_worker) == WORKERS
    assert all(n >= FAIL_MAX for n in per_worker), found[0]
    assert int(found[1]) == sum(per_worker) >= WORKERS * FAIL_MAX
    assert f"{DEMO_MODEL} by worker:" in result.output
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_workers_run_refuses_what_it_cannot_do() -> None:
    """No workers, or an http_client (which cannot travel to another process), is a ValueError."""
    with pytest.raises(ValueError, match="workers must be >= 1"):
        WorkersRun(_config(), 0)
    config = DemoConfig(phases=parse_scenario(SCENARIO), http_client=lambda target: None)
    with pytest.raises(ValueError, match="http_client"):
        WorkersRun(config, 2)
