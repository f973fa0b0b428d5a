"""Shared plumbing: clients on the fake upstream, interleaved timing, spreads, Markdown tables.

Every benchmark compares variants measured *in the same run*, interleaved round by round, so a
machine that speeds up or slows down mid-run moves every variant alike and the ratios stay fair.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import openai

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

    from resilient_openai.testing import FakeUpstream

__all__ = [
    "API_KEY",
    "BACKUP_MODEL",
    "FAKE_BASE_URL",
    "MESSAGES",
    "MODEL",
    "REPO_ROOT",
    "Spread",
    "async_inprocess_client",
    "async_loopback_client",
    "goal_verdict",
    "inprocess_client",
    "interleaved",
    "load_average",
    "loopback_client",
    "machine",
    "markdown_table",
    "quiet_heap",
    "rss_bytes",
    "server_fixes",
    "spread",
    "upstream_process",
]

API_KEY = "sk-bench-0123456789abcdef"
FAKE_BASE_URL = "http://fake.test/v1"
MODEL = "gpt-4o-mini"
BACKUP_MODEL = "gpt-4o-backup"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello in one word."}]
REPO_ROOT = Path(__file__).resolve().parents[1]


# -- clients ------------------------------------------------------------------------------------


def inprocess_client(upstream: FakeUpstream, *, max_retries: int = 0) -> openai.OpenAI:
    """A plain SDK client whose requests go to ``upstream`` in process (no socket)."""
    return openai.OpenAI(
        api_key=API_KEY,
        base_url=FAKE_BASE_URL,
        max_retries=max_retries,
        http_client=httpx2.Client(transport=upstream.transport()),
    )


def async_inprocess_client(upstream: FakeUpstream, *, max_retries: int = 0) -> openai.AsyncOpenAI:
    """The asyncio twin of :func:`inprocess_client`."""
    return openai.AsyncOpenAI(
        api_key=API_KEY,
        base_url=FAKE_BASE_URL,
        max_retries=max_retries,
        http_client=httpx2.AsyncClient(transport=upstream.async_transport()),
    )


def loopback_client(base_url: str, *, max_retries: int = 0) -> openai.OpenAI:
    """A plain SDK client talking HTTP to a fake upstream on 127.0.0.1."""
    return openai.OpenAI(api_key=API_KEY, base_url=base_url, max_retries=max_retries)


def async_loopback_client(base_url: str, *, max_retries: int = 0) -> openai.AsyncOpenAI:
    """The asyncio twin of :func:`loopback_client`."""
    return openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=max_retries)


@contextmanager
def server_fixes() -> Iterator[None]:
    """While inside, the fake loopback server sends at once and queues bursts of connections.

    Two settings of ``FakeUpstream.serve()`` would otherwise dominate what is measured:

    - it writes an answer's headers and body separately without ``TCP_NODELAY``, so Nagle's
      algorithm holds the body until the client's delayed ACK: every answer takes >= 40 ms;
    - its listen backlog is ``socketserver``'s default of 5, so a burst of new connections
      (200 asyncio tasks starting together) overflows it and connections are reset.
    """
    from resilient_openai.testing import _server

    handler, server = _server._Handler, _server._Server
    before = handler.disable_nagle_algorithm, server.request_queue_size
    handler.disable_nagle_algorithm = True
    server.request_queue_size = 1024
    try:
        yield
    finally:
        handler.disable_nagle_algorithm, server.request_queue_size = before


@contextmanager
def upstream_process(latency: float = 0.0, *, start_timeout: float = 20.0) -> Iterator[str]:
    """A fake upstream on 127.0.0.1 in a child process; yields its base URL.

    A separate process, so the server's own work does not compete with the measured client for
    this interpreter's GIL (a real upstream is another machine). Every answer waits ``latency``
    seconds first. The child exits when its stdin closes, so it never outlives this block.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._serve", repr(latency)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + start_timeout
        line = ""
        while not line.startswith("http://") and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line and child.poll() is not None:
                break
        if not line.startswith("http://"):
            raise RuntimeError(f"the upstream process did not start (exit code {child.poll()})")
        yield line.strip()
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)
        if child.stdout is not None:
            child.stdout.close()


# -- timing -------------------------------------------------------------------------------------


def interleaved(
    variants: Mapping[str, Callable[[], object]], *, rounds: int, batch: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round; variants alternate within rounds.

    Each round runs ``batch`` calls of every variant, in order A B C D then D C B A on the next
    round, so slow drift (CPU frequency, a neighbour process) cancels out. The collector runs
    between batches (:func:`quiet_heap`), never charged to one variant by chance of timing.
    """
    for call in variants.values():
        for _ in range(warmup):
            call()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    with quiet_heap():
        for index in range(rounds):
            for name in names if index % 2 == 0 else reversed(names):
                call = variants[name]
                gc.collect()
                started = clock()
                for _ in range(batch):
                    call()
                samples[name].append((clock() - started) / batch)
    return samples


@contextmanager
def quiet_heap() -> Iterator[None]:
    """Collect, then freeze what exists: collections inside stay small and cheap to run.

    Objects alive on entry (modules, clients, warmed caches) move to the permanent generation,
    so a full collection triggered mid-measurement does not scan them, and a ``gc.collect()``
    between batches costs microseconds instead of tens of milliseconds.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True, slots=True)
class Spread:
    """A median with its interquartile range."""

    median: float
    low: float
    high: float


def spread(values: Sequence[float]) -> Spread:
    """Median and quartiles of ``values`` (the quartiles collapse to the median for < 2 values)."""
    middle = statistics.median(values)
    if len(values) < 2:
        return Spread(middle, middle, middle)
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(middle, low, high)


# -- reporting ----------------------------------------------------------------------------------


def goal_verdict(value: float, goal: float, *, at_most: bool) -> str:
    """``met`` or ``not met`` for ``value`` against ``goal``, with by how much it misses."""
    if at_most:
        if value <= goal:
            return "met"
        return f"**not met** ({(value / goal - 1) * 100:.1f} % over)"
    if value >= goal:
        return "met"
    return f"**not met** ({(1 - value / goal) * 100:.1f} % under)"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned."""
    align = [":---", *("---:" for _ in headers[1:])]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``), else its peak from ``resource``."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, Python and the libraries that matter."""
    info = {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "OS": platform.platform(terse=True),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for distribution in ("resilient-openai", "openai", "httpx2", "pybreaker", "cachetools", "tenacity"):
        info[distribution] = _version(distribution)
    info["load average at start (1/5/15 min)"] = load_average()
    info["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return info


def load_average() -> str:
    """The system load averages, to tell a quiet machine from a shared, busy one."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"
