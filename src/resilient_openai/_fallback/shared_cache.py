"""The answer cache shared by every worker through Redis (``[shared]`` with ``cache = true``).

The local :class:`~resilient_openai._fallback.cache.ResponseCache` stays the first place looked
and the only one a call depends on; Redis is a second level behind it, best effort:

* **Reads** (a local miss) run on a small pool of reader threads and the caller waits at most
  ``shared.timeout`` for the answer, sync or asyncio alike (less when its call already spent part
  of that on Redis). A read that fails or runs past ``timeout`` marks Redis *down*; while it is
  down no call asks it at all.
* **Writes** never wait: an answer goes into a bounded queue (:data:`QUEUE_BOUND`) that one
  writer thread encodes and stores (``SET ... PX ttl``); when the queue is full, or Redis is
  down, the answer is dropped and counted (it is still in the local cache).
* **Coming back**: while Redis is down the writer pings it every :data:`RECHECK` seconds and
  marks it *up* again on the first answer, so workers are back on the shared cache within
  ``RECHECK + timeout`` of Redis answering (restarted empty or flushed: a miss, nothing more).

Values are JSON (never pickle): ``{"operation", "model", "stored_at", "body"}`` with the answer
object as ``body``. Keys are ``<namespace>:cache:<request key>``, a SHA-256 over the request and
its tenant scope, itself an HMAC keyed by the secret every worker reads from ``key_secret_env``:
no API key, prompt or answer text is ever part of a key. An answer larger than ``cache.max_bytes``,
or whose body is not strict JSON (``NaN``, invalid UTF-8), is refused.

redis-py is imported only when ``[shared]`` shares the cache, so the ``redis`` extra stays
optional. No redis-py exception leaves this module. No lock is held across I/O: the link's lock
guards counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .cache import CachedAnswer

if TYPE_CHECKING:
    import redis

    from .._policy import Policy

__all__ = ["RECHECK", "SharedCache", "SharedCacheSettings", "SharedCacheStats", "settings_from"]

#: Seconds between pings while Redis is down (the reconnection bound, plus ``timeout``).
RECHECK: Final = 0.5
#: Answers waiting for the writer; more are dropped (and counted) rather than queued.
QUEUE_BOUND: Final = 256
_READERS: Final = 4
_MIN_SECRET_BYTES: Final = 16


@dataclass(frozen=True, slots=True, repr=False)
class SharedCacheSettings:
    """What a shared cache needs, read from the policy and the environment once, at start-up.

    ``repr`` is off: ``password`` and ``secret`` must never reach a log.
    """

    url: str
    password: str | None
    secret: bytes
    namespace: str
    timeout: float
    ttl: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class SharedCacheStats:
    """The shared level for ``health()``: ``state`` is ``"up"`` or ``"down"``; since start-up,
    ``hits`` and ``misses`` of reads asked of Redis, answers ``stored`` in it, answers
    ``dropped`` (queue full, Redis down or failing), answers ``refused`` (too large, not JSON)."""

    state: str
    hits: int
    misses: int
    stored: int
    dropped: int
    refused: int


def settings_from(policy: Policy, environ: Mapping[str, str]) -> tuple[SharedCacheSettings | None, list[str]]:
    """The shared cache's settings (None: the cache is not shared), or the problems that stop it.

    The cache is shared when ``[shared]`` is set with ``cache = true`` and ``key_secret_env``.
    Problems name keys and variables, never their values.
    """
    shared = policy.shared
    if shared is None or not shared.cache or shared.key_secret_env is None:
        return None, []
    problems: list[str] = []
    url, where = shared.url, "shared.url"
    if shared.url_env is not None:
        url, where = environ.get(shared.url_env) or None, f"shared.url_env: the variable {shared.url_env!r}"
        if url is None:
            problems.append(f"{where} is not set")
    try:
        import redis
    except ImportError:
        problems.append("shared: needs redis-py; install the extra: pip install 'resilient-openai[redis]'")
    else:
        try:
            if url is not None:
                redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError:  # its message may quote the URL, and a URL may hold a password
            problems.append(f"{where} must be a redis://, rediss:// or unix:// URL (not shown)")
    password = None
    if shared.password_env is not None:
        password = environ.get(shared.password_env) or None
        if password is None:
            problems.append(f"shared.password_env: the variable {shared.password_env!r} is not set")
    secret = environ.get(shared.key_secret_env, "").encode()
    if len(secret) < _MIN_SECRET_BYTES:
        problems.append(
            f"shared.key_secret_env: the variable {shared.key_secret_env!r} must hold a secret of at "
            f"least {_MIN_SECRET_BYTES} bytes, the same in every worker"
        )
    if problems or url is None:
        return None, problems
    made = SharedCacheSettings(
        url=url, password=password, secret=secret, namespace=shared.namespace, timeout=shared.timeout,
        ttl=policy.cache.ttl, max_bytes=policy.cache.max_bytes,
    )  # fmt: skip
    return made, []


def _encode(answer: CachedAnswer) -> bytes | None:
    """The JSON stored for ``answer`` (its body as it is, in an envelope), or None when the body
    is not strict JSON: not UTF-8, ``NaN`` or ``Infinity``, not an object."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        body = json.loads(answer.body.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError):  # also UnicodeDecodeError and JSONDecodeError
        return None
    if not isinstance(body, dict):
        return None
    head = {"operation": answer.operation, "model": answer.model, "stored_at": answer.stored_at}
    return json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"body":' + answer.body + b"}"


#: What a stored value may hold besides its answer (operation, model, time): past ``max_bytes``
#: plus this, a value is not read at all.
ENVELOPE_BYTES: Final = 1024


def _decode(raw: bytes, max_bytes: int) -> CachedAnswer | None:
    """The answer a stored value holds, or None for a value this version cannot read or serve
    (too large, not JSON, not a whole answer of its operation)."""
    if len(raw) > max_bytes + ENVELOPE_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    operation, model, stored_at, body = (value.get(k) for k in ("operation", "model", "stored_at", "body"))
    if (
        not isinstance(operation, str)
        or not (model is None or isinstance(model, str))
        or not isinstance(stored_at, int | float)
        or not isinstance(body, dict)
        or not _whole(operation, body)
    ):
        return None
    return CachedAnswer(operation, model, json.dumps(body, separators=(",", ":")).encode(), float(stored_at))


def _whole(operation: str, body: dict[str, Any]) -> bool:
    """Whether ``body`` is an answer of ``operation`` that can be served, plainly or as a stream.
    Redis may hold anything under a key (another writer, a damaged value): only what this
    library stores itself gets through."""
    if not (isinstance(body.get("id"), str) and isinstance(body.get("model"), str)):
        return False
    if operation == "chat.completions":
        choices = body.get("choices")
        return (
            isinstance(body.get("created"), int | float)
            and isinstance(choices, list)
            and all(_fields(choice, index=int, message=dict) for choice in choices)
        )
    if operation == "responses":
        output = body.get("output")
        return isinstance(output, list) and all(_fields(item, type=str) for item in output)
    return False


def _fields(value: object, **kinds: type) -> bool:
    """Whether ``value`` is a dict holding each named field with a value of its kind."""
    return isinstance(value, dict) and all(isinstance(value.get(name), kind) for name, kind in kinds.items())


class _Link:
    """The connection and its health, shared by the callers' side and the writer thread.

    ``up`` is one attribute, read without the lock (a stale read costs one skipped or one
    timed-out Redis read, never a wrong answer). The lock guards the counters only.
    """

    def __init__(self, settings: SharedCacheSettings) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.redis: redis.Redis = redis.Redis.from_url(
            settings.url,
            password=settings.password,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0),  # one try: a failure marks Redis down, the writer retries
            health_check_interval=0,
        )
        self.ttl_ms = max(int(settings.ttl * 1000), 1)
        self.up = True
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"hits": 0, "misses": 0, "stored": 0, "dropped": 0, "refused": 0}

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def read(self, name: str) -> bytes | None:
        """GET ``name`` (on a reader thread); a failure marks Redis down and reads as a miss."""
        try:
            raw: Any = self.redis.get(name)
        except Exception:  # whatever redis-py raises stays on the reader thread
            self.up = False
            return None
        return raw if isinstance(raw, bytes) else None

    def close(self) -> None:
        """Stop asking Redis, at once: the writer closes the connections when it sees this
        (within :data:`RECHECK`), so it can never ping one open again afterwards."""
        self.closed.set()
        self.up = False  # no caller asks a closed link


def _write(link: _Link, pending: queue.Queue[tuple[str, CachedAnswer]]) -> None:
    """The writer thread: encode and store queued answers; while Redis is down, drop and ping.
    It owns the connections' end: it closes them when the link is closed."""
    try:
        _write_until_closed(link, pending)
    finally:
        with contextlib.suppress(Exception):
            link.redis.close()


def _write_until_closed(link: _Link, pending: queue.Queue[tuple[str, CachedAnswer]]) -> None:
    next_ping = 0.0
    while not link.closed.is_set():
        try:
            item: tuple[str, CachedAnswer] | None = pending.get(timeout=RECHECK)
        except queue.Empty:
            item = None
        if link.closed.is_set():
            return
        if not link.up and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + RECHECK
            with contextlib.suppress(Exception):  # whatever redis-py raises stays in this thread
                alive = bool(link.redis.ping())
                link.up = alive and not link.closed.is_set()  # a closed link stays down
        if item is None:
            continue
        name, answer = item
        value = _encode(answer)
        if value is None:
            link.count("refused")
        elif not link.up:
            link.count("dropped")
        else:
            try:
                link.redis.set(name, value, px=link.ttl_ms)
            except Exception:  # whatever redis-py raises stays in this thread
                link.up = False
                link.count("dropped")
            else:
                link.count("stored")


class SharedCache:
    """The Redis level of the answer cache: bounded waits on reads, no wait at all on writes.

    Thread-safe and usable from asyncio tasks. Made again in a forked worker on first use (threads
    do not survive ``fork``); closed when garbage-collected.
    """

    def __init__(self, settings: SharedCacheSettings) -> None:
        self.secret = settings.secret
        self._prefix = f"{settings.namespace}:cache:"
        #: The longest a read waits (``shared.timeout``), shared by every Redis read of one call.
        self.timeout = settings.timeout
        self._max_bytes = settings.max_bytes
        self._settings = settings
        self._start_lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        """A link, a writer thread and reader threads for this process."""
        link = _Link(self._settings)
        pending: queue.Queue[tuple[str, CachedAnswer]] = queue.Queue(QUEUE_BOUND)
        readers = concurrent.futures.ThreadPoolExecutor(_READERS, thread_name_prefix="resilient-cache-r")
        writer = threading.Thread(target=_write, args=(link, pending), name="resilient-cache-w", daemon=True)
        writer.start()
        self._pid = os.getpid()
        self._link, self._pending, self._readers = link, pending, readers
        self._writer = writer
        self._finalizer = weakref.finalize(self, _close, link, readers)

    def _here(self) -> _Link:
        """This process's link (a forked worker starts its own)."""
        if self._pid != os.getpid():
            with self._start_lock:
                if self._pid != os.getpid():
                    self._finalizer.detach()
                    self._start()
        return self._link

    def _submit(
        self, key: str, operation: str, within: float
    ) -> concurrent.futures.Future[CachedAnswer | None] | None:
        link = self._here()
        if not link.up or within <= 0:
            return None
        try:
            return self._readers.submit(self._fetch, link, self._prefix + key, operation)
        except RuntimeError:  # closed meanwhile: no reads any more
            return None

    def _fetch(self, link: _Link, name: str, operation: str) -> CachedAnswer | None:
        """Read and decode on a reader thread: a large value never costs a caller (or a loop).
        An answer of another operation is none (a key holds one only if something else wrote it)."""
        raw = link.read(name)
        answer = _decode(raw, self._max_bytes) if raw is not None else None
        return answer if answer is not None and answer.operation == operation else None

    def _took(self, answer: CachedAnswer | None) -> CachedAnswer | None:
        self._link.count("misses" if answer is None else "hits")
        return answer

    def get(self, key: str, operation: str, within: float) -> CachedAnswer | None:
        """The ``operation`` answer stored under ``key`` by any worker, waiting at most ``within``
        seconds (<= ``timeout``); None on a miss, when Redis is down, or when it did not answer in
        time (marked down when that was the whole ``timeout``)."""
        future = self._submit(key, operation, within)
        if future is None:
            return None
        try:
            answer = future.result(timeout=within)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._late(within)
            return None
        except concurrent.futures.CancelledError:  # the cache was closed meanwhile
            return None
        return self._took(answer)

    async def get_async(self, key: str, operation: str, within: float) -> CachedAnswer | None:
        """:meth:`get` for asyncio tasks: the loop is never blocked, the wait as bounded."""
        future = self._submit(key, operation, within)
        if future is None:
            return None
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), within)
        except TimeoutError:
            self._late(within)
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and (task is None or not task.cancelling()):
                return None  # the cache was closed meanwhile, not this task cancelled
            raise
        return self._took(answer)

    def _late(self, waited: float) -> None:
        """A read did not answer in ``waited`` seconds: Redis is down if that was all of ``timeout``
        (a shorter wait, the rest of a call's allowance, says nothing about Redis)."""
        if waited >= self.timeout:
            self._link.up = False

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Queue ``answer`` for Redis and return at once (a full queue drops it, counted)."""
        link = self._here()
        if len(answer.body) > self._max_bytes:
            link.count("refused")
            return
        try:
            self._pending.put_nowait((self._prefix + key, answer))
        except queue.Full:
            link.count("dropped")

    def close(self) -> None:
        """Stop this process's writer and readers and close the connection (for the client's
        ``close()``); answers still queued for Redis are dropped, the local cache keeps them.
        Returns once the writer has ended (within :data:`RECHECK` and one Redis command)."""
        self._finalizer()
        writer = self._writer
        if writer is not threading.current_thread():
            writer.join(timeout=RECHECK + 2 * self.timeout)

    def stats(self) -> SharedCacheStats:
        """This process's counters, and whether Redis is up (that is: not known to be down)."""
        link = self._here()
        with link.lock:
            counts = dict(link.counts)
        return SharedCacheStats(state="up" if link.up else "down", **counts)


def _close(link: _Link, readers: concurrent.futures.ThreadPoolExecutor) -> None:
    """Stop the readers and the writer (which closes the connections), without waiting: this
    also runs when a cache is garbage-collected, in whatever thread the collector runs."""
    readers.shutdown(wait=False, cancel_futures=True)
    link.close()
