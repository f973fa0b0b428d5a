"""The FastAPI example under ``uvicorn --workers 4``: four processes, one breaker on Redis.

A real uvicorn is launched on a free port against a loopback fake upstream that answers 503;
its policy has a ``[shared]`` section in this test's own Redis namespace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

from resilient_openai.testing import FakeUpstream, Status

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = "gpt-4o-mini"  # the example's default model
WORKERS = 4
FAIL_MAX = 3
SECRET_ENV = "RESILIENT_TEST_CACHE_SECRET"
#: The longest the test waits for uvicorn's workers to start, then for them all to report (each
#: must be handed a /chat by the kernel: on a loaded machine one may wait its turn a while).
START_WITHIN = 30.0
SETTLE_WITHIN = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _policy(path: Path, redis_url: str, namespace: str) -> Path:
    """One attempt per call, no fallback, a breaker that opens after FAIL_MAX failures and stays open."""
    path.write_text(
        f"""
[retry.rules.server_error]
attempts = 1

[breaker]
mode = "consecutive"
fail_max = {FAIL_MAX}
break_duration = 30.0
break_max = 30.0

[shared]
url = "{redis_url}"
namespace = "{namespace}"
key_secret_env = "{SECRET_ENV}"
"""
    )
    return path


def _health(base: str) -> dict[str, Any] | None:
    """One /health on a fresh connection (so the kernel may hand it to any worker); None if down."""
    try:
        reply = httpx2.get(f"{base}/health", timeout=2.0)
    except httpx2.TransportError:
        return None
    body: dict[str, Any] = reply.json()
    return body


def _state(report: dict[str, Any]) -> str | None:
    """The state of the model's breaker in one worker's /health; None before its first call."""
    return next((b["state"] for b in report["breakers"] if b["name"].endswith(f":{MODEL}")), None)


def test_four_uvicorn_workers_share_one_breaker(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """The upstream fails: about fail_max requests reach it in total, and all 4 workers report open."""
    upstream = FakeUpstream()
    upstream.set_default(MODEL, Status(503))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with upstream.serve() as upstream_url:
        env = os.environ | {
            "RESILIENT_OPENAI_POLICY": str(_policy(tmp_path / "shared.toml", redis_url, namespace)),
            "OPENAI_API_KEY": "sk-test-uvicorn",
            "OPENAI_BASE_URL": upstream_url,
            SECRET_ENV: "a-test-secret-of-32-bytes-000000",
        }
        argv = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]
        argv += ["--log-level", "warning"]
        server = subprocess.Popen(argv, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
        try:
            # Every worker up: /health has answered from 4 different pids.
            pids: set[int] = set()
            deadline = time.monotonic() + START_WITHIN
            while len(pids) < WORKERS:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, f"only {len(pids)} workers answered"
                report = _health(base)
                if report is None:
                    time.sleep(0.05)  # uvicorn is not listening yet
                else:
                    pids.add(report["pid"])
            # Chat until every worker has called the upstream's model and sees its breaker open; a
            # worker's first call reads the shared state, so once it is open, none reaches the upstream.
            states: dict[int, str | None] = dict.fromkeys(pids)
            deadline = time.monotonic() + SETTLE_WITHIN
            while any(state != "open" for state in states.values()):
                assert time.monotonic() < deadline, states
                reply = httpx2.post(f"{base}/chat", json={"prompt": "hi"}, timeout=5.0)
                assert reply.status_code in (502, 503), reply.text
                report = _health(base)
                assert report is not None
                states[report["pid"]] = _state(report)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert set(states) == pids
    assert len(pids) == WORKERS
    # fail_max failures in a row, fleet-wide; a request sent before the last failure reached Redis
    # may add one. Per-process breakers would let up to WORKERS x fail_max through.
    assert FAIL_MAX <= upstream.count(model=MODEL) <= FAIL_MAX + 1
