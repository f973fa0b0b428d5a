"""The demo's workers mode: N worker processes, one fake upstream, breakers shared on Redis.

:class:`WorkersRun` serves one :class:`~._demo.Stage` in this process and starts ``workers``
processes (``spawn``). Each runs a :class:`~._demo.Caller` at its share of the rate, all on one
timeline (a common origin on ``time.monotonic``, which every process on a machine shares), and
reports what it recorded every :data:`~._demo.TICK` over a queue; the result is a
:class:`~._demo.DemoResult` whose ``workers`` say each worker's breakers.

With a Redis answering at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) the workers'
policy gains a ``[shared]`` section in a namespace of the run's own, deleted afterwards: one
breaker per target for all of them. Without one, each worker keeps its own breakers and
``DemoResult.sharing`` says so and why.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ._demo import (
    DEMO_FALLBACK_MODEL,
    DEMO_MODEL,
    TICK,
    BreakerChange,
    Caller,
    CallRecord,
    DemoConfig,
    DemoResult,
    Stage,
    WorkerStatus,
    demo_policy,
    warm_up,
)
from ._policy import Policy, SharedPolicy

__all__ = ["DEFAULT_REDIS_URL", "REDIS_ENV", "WorkersRun", "find_redis"]

#: The variable naming the Redis to share breakers on, and the one tried without it.
REDIS_ENV: Final = "REDIS_URL"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
#: How long the workers may take to start (import, build nothing yet) before the run gives up.
_START_TIMEOUT: Final = 60.0
#: The common origin is this long after the last worker reported ready.
_LEAD: Final = 0.1
#: How long stopping waits for a worker to finish its calls in flight before terminating it.
_REAP_TIMEOUT: Final = 5.0


def _shown(url: str) -> str:
    """``url`` as it may be printed: scheme, host and port only (never a password)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(an unreadable URL)"


def find_redis(timeout: float = 0.5) -> tuple[str | None, str]:
    """The Redis to share breakers on, if one answers a PING within ``timeout``, and why not if not.

    Reads :data:`REDIS_ENV`, else tries :data:`DEFAULT_REDIS_URL`. Returns ``(url, "")`` or
    ``(None, reason)``; the reason never shows a password.
    """
    url = os.environ.get(REDIS_ENV) or DEFAULT_REDIS_URL
    try:
        import redis
    except ImportError:
        return None, "the 'redis' package is not installed (pip install 'resilient-openai[redis]')"
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return None, f"Redis did not answer at {_shown(url)} ({type(exc).__name__})"
    return url, ""


def _forget(url: str, namespace: str) -> None:
    """Delete every key under ``namespace`` (the run's breakers), whatever happened in the run."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # Redis went away during the run: nothing left to delete that we can reach
    finally:
        client.close()


@dataclass(frozen=True, slots=True)
class _Report:
    """What a worker sends every tick: what it recorded since its last report, and its state."""

    index: int
    pid: int
    records: tuple[CallRecord, ...] = ()
    changes: tuple[BreakerChange, ...] = ()
    bug_reports: tuple[str, ...] = ()
    breakers: tuple[dict[str, Any], ...] = ()
    in_flight: int = 0
    done: bool = False
    #: The traceback of a crash in the worker (it reports no more).
    failure: str | None = None


def _work(
    index: int,
    workers: int,
    config: DemoConfig,
    policy: Policy,
    base_url: str,
    start: Any,
    origin: Any,
    stop: Any,
    reports: Any,
    redis_url: str | None,
) -> None:
    """One worker process: warm up, report ready, wait for the common start, run a Caller, report.

    ``redis_url``: the Redis the parent found, handed over in the environment variable the
    policy names (a fork server's children have the environment of its start, not the parent's).
    """
    # Ctrl-C reaches the whole terminal process group; stopping is the parent's decision (``stop``).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if redis_url is not None:
        os.environ[REDIS_ENV] = redis_url
    pid = os.getpid()
    try:
        warm_up(base_url, policy)
        reports.put(_Report(index, pid))
        start.wait()
        # The rate and the callers are shared out; worker i's calls fall between the others'.
        concurrency = max(math.ceil(config.concurrency / workers), 2)
        caller = Caller(
            config, policy, rate=config.rate / workers, concurrency=concurrency, offset=index / config.rate,
            origin=origin.value, worker=index,
        )  # fmt: skip
        failure: list[str] = []

        def drive() -> None:
            try:
                caller.drive(base_url)
            except BaseException:
                failure.append(traceback.format_exc())
                caller.load.stop()

        driver = threading.Thread(target=drive, name=f"resilient-openai-demo-worker-{index}", daemon=True)
        driver.start()
        sent = (0, 0, 0)
        while True:
            driver.join(TICK)
            if stop.is_set():
                caller.load.stop()
            records, changes, bugs = caller.collected()
            done = not driver.is_alive()
            reports.put(
                _Report(
                    index, pid, records[sent[0] :], changes[sent[1] :], bugs[sent[2] :],
                    tuple(caller.breakers()), caller.load.in_flight, done, failure[0] if failure else None,
                )
            )  # fmt: skip
            sent = (len(records), len(changes), len(bugs))
            if done:
                return
    except BaseException:
        reports.put(_Report(index, pid, done=True, failure=traceback.format_exc()))


def _context() -> Any:
    """Where workers come from: a fork server that imported this module once (else ``spawn``).

    Importing the SDK takes a second or two; forked from a server that did it already, a worker
    is ready at once, and the server (single-threaded) stays for the next run.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class WorkersRun:
    """One run of the demo in ``workers`` processes against one upstream: ``run()`` blocks to the end.

    ``config`` is the one-process demo's (its ``rate`` and ``concurrency`` are shared out among
    the workers); its ``http_client`` cannot travel to another process and must be None.
    ``namespace`` names the Redis namespace of the shared breakers (default: a fresh one); it is
    deleted after the run. ``on_tick`` works as in :class:`~._demo.DemoRun`; Ctrl-C (or an
    error from ``on_tick``) stops every worker, which finishes its calls in flight.
    """

    def __init__(self, config: DemoConfig, workers: int, *, namespace: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if config.http_client is not None:
            raise ValueError("a workers run cannot hand http_client to other processes: leave it None")
        self.config = config
        self.workers = workers
        policy = config.policy or demo_policy(DEMO_MODEL, DEMO_FALLBACK_MODEL)
        self._stage = Stage(config.phases, policy)
        self._redis_url, why = find_redis()
        self.namespace = None
        if self._redis_url is None:
            self.sharing = f"{why}: every worker keeps its own breakers (per process)"
        else:
            self.namespace = namespace or f"resilient-openai-demo-{uuid.uuid4().hex[:12]}"
            # The variable if it is set (a URL with a password may only come from there), else the URL.
            located: dict[str, str] = (
                {"url_env": REDIS_ENV} if os.environ.get(REDIS_ENV) else {"url": self._redis_url}
            )
            shared = SharedPolicy.model_validate({**located, "namespace": self.namespace})
            policy = policy.model_copy(update={"shared": shared})
            self.sharing = (
                f"breakers shared on Redis at {_shown(self._redis_url)}, namespace {self.namespace} "
                "(deleted after the run)"
            )
        self.policy = policy
        self._base_url = ""
        self._origin: float | None = None
        self._status: dict[int, WorkerStatus] = {}
        self._records: list[CallRecord] = []
        self._changes: list[BreakerChange] = []
        self._bug_reports: list[str] = []

    @property
    def shared(self) -> bool:
        """True when the workers share their breakers on Redis."""
        return self.namespace is not None

    def run(self, on_tick: Callable[[DemoResult], None] | None = None) -> DemoResult:
        """Start the workers, play the scenario to them, and return what happened to all of them."""
        context = _context()
        with ExitStack() as stack:
            if self._redis_url is not None and self.namespace is not None:
                stack.callback(_forget, self._redis_url, self.namespace)
            self._base_url = stack.enter_context(self._stage.serve())
            reports = context.Queue()
            start, stop, origin = context.Event(), context.Event(), context.Value("d", 0.0)
            processes = [
                context.Process(
                    target=_work,
                    args=(
                        i,
                        self.workers,
                        self.config,
                        self.policy,
                        self._base_url,
                        start,
                        origin,
                        stop,
                        reports,
                        self._redis_url,
                    ),
                    name=f"resilient-openai-demo-worker-{i}",
                    daemon=True,
                )
                for i in range(self.workers)
            ]
            stack.callback(self._reap, processes, stop, reports)
            for process in processes:
                process.start()
            deadline = time.monotonic() + _START_TIMEOUT
            while not (self._status and all(s.done for s in self._status.values())):
                self._stage.conduct(self._elapsed())
                self._drain(reports, TICK)
                if self._origin is None and len(self._status) == self.workers:
                    self._stage.upstream.reset_counts()  # the workers' warm-up calls
                    self._origin = origin.value = time.monotonic() + _LEAD
                    start.set()
                elif self._origin is None and time.monotonic() > deadline:
                    raise RuntimeError(f"the demo's workers did not start within {_START_TIMEOUT:g} s")
                self._check(processes, reports)
                if on_tick is not None:
                    on_tick(self.snapshot())
            return self.snapshot()

    def _elapsed(self) -> float:
        return 0.0 if self._origin is None else max(time.monotonic() - self._origin, 0.0)

    def _drain(self, reports: Any, wait: float) -> None:
        """Take in every report waiting, waiting up to ``wait`` seconds for the first."""
        try:
            report: _Report = reports.get(timeout=wait)
            while True:
                self._take(report)
                report = reports.get_nowait()
        except queue.Empty:
            return

    def _take(self, report: _Report) -> None:
        if report.failure is not None:
            raise RuntimeError(f"demo worker {report.index} (pid {report.pid}) failed:\n{report.failure}")
        self._records += report.records
        self._changes += report.changes
        self._bug_reports += report.bug_reports
        self._status[report.index] = WorkerStatus(
            report.index, report.pid, report.breakers, report.in_flight, report.done
        )

    def _check(self, processes: list[Any], reports: Any) -> None:
        """Raise if a worker died without reporting its end (after taking in what it did report)."""
        for index, process in enumerate(processes):
            status = self._status.get(index)
            if process.exitcode is not None and not (status is not None and status.done):
                self._drain(reports, TICK)
                status = self._status.get(index)
                if not (status is not None and status.done):
                    raise RuntimeError(
                        f"demo worker {index} exited with code {process.exitcode} before its end"
                    )

    def _reap(self, processes: list[Any], stop: Any, reports: Any) -> None:
        """Stop the workers: ask, wait for their calls in flight (reading their reports), then terminate."""
        stop.set()
        deadline = time.monotonic() + _REAP_TIMEOUT
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            # A worker cannot exit while its last reports sit in the pipe: keep reading them.
            try:
                while True:
                    reports.get(timeout=TICK)
            except queue.Empty:
                pass
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(1.0)
        reports.close()

    def snapshot(self) -> DemoResult:
        """The run as it stands (from the thread running :meth:`run`, or after it)."""
        end = self.config.phases[-1].end
        statuses = tuple(self._status[i] for i in sorted(self._status))
        return DemoResult(
            phases=self.config.phases,
            base_url=self._base_url,
            elapsed=min(self._elapsed(), end),
            in_flight=sum(s.in_flight for s in statuses),
            records=tuple(self._records),
            arrivals=self._stage.arrivals(self._origin or time.monotonic()),
            breaker_changes=tuple(sorted(self._changes, key=lambda c: c.at)),
            breakers=(),
            bug_reports=tuple(self._bug_reports),
            workers=statuses,
            sharing=self.sharing,
            shared=self.shared,
        )
