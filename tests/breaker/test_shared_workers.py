"""Shared breakers across worker processes, against one fake upstream that always fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from resilient_openai.testing import FakeUpstream, Status

WORKER = Path(__file__).with_name("_worker.py")


def test_four_workers_pay_fail_max_once_and_probe_once_per_open_period(
    redis_url: str, namespace: str
) -> None:
    """4 processes x 100 calls/s for 1 s: ~fail_max + 2 probes reach the upstream, not 4 x that."""
    upstream = FakeUpstream()
    upstream.set_default("m", Status(500))
    with upstream.serve() as base_url:
        workers = [
            subprocess.Popen(
                [sys.executable, str(WORKER), redis_url, namespace, base_url, "1.0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                assert worker.stdout.readline().strip() == "ready"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            results = [json.loads(worker.communicate(timeout=30)[0]) for worker in workers]
        finally:
            for worker in workers:
                worker.kill()
    hits = upstream.count()
    assert sum(r["sent"] for r in results) == hits
    assert sum(r["refused"] for r in results) > 200
    # fail_max (5) + one probe after the 0.3 s break + one after the 0.6 s break, plus at most one
    # call per other worker already in flight when the circuit tripped. Per-process breakers: 4 x 7.
    assert 6 <= hits <= 7 + 3, hits
