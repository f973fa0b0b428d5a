"""The I/O side of shared breakers: one process's link to Redis, and a pybreaker storage over it.

:class:`RedisLink` owns the connection (every command bounded by ``shared.timeout``, no
retries inside redis-py), runs :data:`~._lua.BREAKER_SCRIPT`, and keeps two daemon threads:

* the *flusher* sends the outcomes queued by callers (successes batched every
  :data:`FLUSH_INTERVAL`, a failure at once), re-reads every breaker every
  :data:`REFRESH_INTERVAL` (the backstop of the push), and while Redis is unreachable pings it
  every :data:`RECONNECT_INTERVAL`, resynchronising every breaker as soon as it answers;
* the *listener* follows the namespace's channel, where every transition is published, so a
  trip reaches every worker in milliseconds.

A breaker's first read (:meth:`RedisLink.read`, :meth:`RedisLink.read_soon`) runs on a reader
thread, so a caller can wait for it less than ``timeout`` when its call already spent part of
that on Redis, and an asyncio caller awaits it without blocking its loop. :meth:`RedisLink.close`
sends what is still queued, then stops both threads.

No lock is held across I/O, and no redis-py exception leaves this module: a failed command marks
the link down (callers then follow ``on_unavailable``) and returns None. ``redis`` is imported
here only, lazily, through :func:`connect`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import pybreaker

from .._errors import ConfigError
from ._lua import BREAKER_SCRIPT
from ._state import CLOSED

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

    from .._policy import BreakerPolicy, SharedPolicy

__all__ = [
    "FLUSH_INTERVAL",
    "RECONNECT_INTERVAL",
    "REFRESH_INTERVAL",
    "RedisBreakerStorage",
    "RedisLink",
    "Reply",
    "connect",
]

#: Longest a success waits in the queue before it is sent (failures are sent at once).
FLUSH_INTERVAL: Final = 0.05
#: Every breaker is re-read this often: the bound on staleness if a published change is lost.
REFRESH_INTERVAL: Final = 0.5
#: While Redis is unreachable it is pinged this often; the first answer resynchronises everything.
RECONNECT_INTERVAL: Final = 0.25
#: How long the listener waits for a message before checking whether it should stop.
LISTEN_POLL: Final = 0.05
#: Most outcomes waiting to be sent; past it the oldest are dropped (only under extreme load).
QUEUE_LIMIT: Final = 65536

_log = logging.getLogger("resilient_openai.shared")


class Reply(NamedTuple):
    """What the script answers: a breaker's shared state right after the op."""

    state: str
    gen: int
    #: Seconds until a call could be admitted (0: now; -1: never by itself, isolated).
    wait: float
    failures: int
    reopens: int
    opened_at: float | None
    admitted: bool
    #: The worker (``pid@host``) that made the last transition, and why.
    by: str
    reason: str
    #: The hash's version: of two replies, the higher one is newer (they reach a worker from its
    #: callers, its flusher and its listener, in any order).
    version: int

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> Reply:
        """From the script's reply (or a published message's fields), in the script's order."""
        state, gen, wait_ms, failures, reopens, opened_at, admitted, by, reason, version = raw
        wait = -1.0 if int(wait_ms) < 0 else int(wait_ms) / 1000
        return cls(
            str(state), int(gen), wait, int(failures), int(reopens),
            float(opened_at) if opened_at else None, bool(int(admitted)), str(by), str(reason),
            int(version),
        )  # fmt: skip


class Follower(Protocol):
    """A shared breaker, as the link sees it: a name, a policy and a local view to update."""

    name: str
    policy: BreakerPolicy

    @property
    def version(self) -> int: ...

    def adopt(self, reply: Reply) -> None: ...

    def reconnected(self) -> None: ...

    def refused(self) -> None: ...


def _args(policy: BreakerPolicy) -> list[str | int | float]:
    """The script's policy arguments (``ARGV[5:17]``), in its order."""
    slow = policy.slow_call_threshold
    return [
        policy.fail_max, policy.half_open_probes, policy.close_after, policy.probe_lease,
        policy.break_duration, policy.break_multiplier, policy.break_max,
        policy.mode, policy.failure_ratio, policy.window, policy.min_calls,
        policy.slow_call_ratio, "" if slow is None else f"{slow:g}",
    ]  # fmt: skip


def worker_id() -> str:
    """This process, as events and the hash name it: ``pid@host``."""
    return f"{os.getpid()}@{socket.gethostname()}"


def connect(shared: SharedPolicy, *, background: bool = True) -> RedisLink:
    """A started :class:`RedisLink` for ``shared``, or ConfigError (no ``redis`` extra, no URL).

    Redis being unreachable is no error: the link starts down and follows ``on_unavailable``
    until Redis answers. ``background=False``: no flusher and no listener (for a storage that
    makes its round trips in the caller's thread).
    """
    env = os.environ
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigError(["shared: needs the redis extra: pip install 'resilient-openai[redis]'"]) from None
    url = shared.url
    if url is None:
        url = env.get(shared.url_env or "")
        if not url:
            raise ConfigError([f"shared.url_env: the variable {shared.url_env} is not set"])
    password = env.get(shared.password_env) if shared.password_env else None
    client = redis.Redis.from_url(
        url,
        password=password,
        socket_timeout=shared.timeout,
        socket_connect_timeout=shared.timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    return RedisLink(client, shared, background=background)


class RedisLink:
    """One process's connection to the shared breakers of one namespace (see the module docs)."""

    def __init__(self, client: redis.Redis, shared: SharedPolicy, *, background: bool = True) -> None:
        import redis as redis_module

        self._errors: tuple[type[BaseException], ...] = (redis_module.RedisError, OSError)
        #: Redis answered, but refused one key's script (a key of another type under the name,
        #: a script error): that breaker decides alone; the link and every other breaker stay up.
        self._refusal: type[BaseException] = redis_module.ResponseError
        #: The breakers whose key Redis refused at their last script (said once per refusal).
        self._refused: set[str] = set()
        #: The connection (every command bounded by ``shared.timeout``) and the loaded script.
        self.client = client
        self.shared = shared
        self.who = worker_id()
        self.channel = f"{shared.namespace}:breakers"
        self.script: Script = client.register_script(BREAKER_SCRIPT)
        self._followers: weakref.WeakValueDictionary[str, Follower] = weakref.WeakValueDictionary()
        #: Outcomes waiting for the flusher: (breaker, generation, "S" | "W" | "F", and the
        #: Retry-After a failure carried, capped at ``break_max``; 0 for none).
        self.queue: deque[tuple[Follower, int, str, float]] = deque(maxlen=QUEUE_LIMIT)
        #: Probe outcomes waiting for the flusher, sent at once (it is woken for each):
        #: (breaker, the probe's lease, ``"generation:S|F|I"``, the Retry-After as text).
        self.settles: deque[tuple[Follower, str, str, str]] = deque(maxlen=QUEUE_LIMIT)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._probe_ids = iter(range(1, 1 << 62))
        #: Runs first reads, so that a caller may stop waiting before the socket's timeout.
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="ro-shared-read")
        self._probe_prefix = f"{self.who}:{secrets.token_hex(4)}"
        #: Whether Redis answered the last command. Read without a lock: a moment's staleness
        #: only sends one more call down the path it would have taken a moment earlier.
        self.up = self._ping()
        ref = weakref.ref(self)
        self._threads = [
            threading.Thread(target=loop, args=(ref, self._stop), name=f"ro-shared-{what}", daemon=True)
            for loop, what in ((_flush_loop, "flush"), (_listen_loop, "listen"))
            if background
        ]
        for thread in self._threads:
            thread.start()

    def key(self, name: str) -> str:
        """The hash holding breaker ``name``."""
        return f"{self.shared.namespace}:breaker:{name}"

    def follow(self, breaker: Follower) -> None:
        """Keep ``breaker``'s view current from now on (pushes, refreshes, reconnections)."""
        self._followers[breaker.name] = breaker

    def probe_id(self) -> int:
        """A probe token, unique in this process (> 0, as a :class:`Permit` wants)."""
        return next(self._probe_ids)

    def lease(self, probe: int) -> str:
        """Probe ``probe``'s lease owner: unique across the cluster (pid, host, a random tag)."""
        return f"{self._probe_prefix}:{probe}"

    def run(
        self, name: str, policy: BreakerPolicy, op: str, arg1: str = "", arg2: str = "", arg3: str = ""
    ) -> Reply | None:
        """Run ``op`` on breaker ``name``'s hash; None if Redis failed (the link marked down) or
        refused this key (see :meth:`refused`)."""
        args = [op, self.channel, self.who, name, *_args(policy), arg1, arg2, arg3]
        try:
            raw = self.script(keys=[self.key(name)], args=args)
        except self._refusal as exc:
            self.refused(name, exc)
            return None
        except Exception as exc:
            # Whatever fails here (a closed connection pool raises ValueError when close() runs
            # meanwhile) is Redis being unavailable, never the caller's.
            self.mark_down(exc)
            return None
        self._refused.discard(name)
        return Reply.parse(raw)

    def refuses(self, name: str) -> bool:
        """Whether Redis refused breaker ``name``'s script the last time it ran."""
        return name in self._refused

    def refused(self, name: str, exc: BaseException) -> None:
        """Redis refused breaker ``name``'s script: said once per breaker; its calls then follow
        ``on_unavailable`` alone, and nothing else is marked down."""
        follower = self._followers.get(name)
        if follower is not None:
            follower.refused()
        if name not in self._refused:
            self._refused.add(name)
            _log.warning("shared breaker %s: Redis refused its script (%s); on_unavailable=%s for it",
                         name, type(exc).__name__, self.shared.on_unavailable)  # fmt: skip

    def read(self, name: str, policy: BreakerPolicy, within: float) -> Reply | None:
        """Breaker ``name``'s shared state, waiting at most ``within`` seconds (<= ``timeout``).

        None when Redis is down, failed, or did not answer in time. A read cut short by
        ``within`` does not mark the link down: Redis may still be inside its own ``timeout``,
        and the periodic refresh brings the state anyway.
        """
        if not self.up or within <= 0:
            return None
        try:
            future = self._readers.submit(self.run, name, policy, "read")
            return future.result(timeout=within)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            # Too slow, or the link closed meanwhile (its reads cancelled, or none taken): unread.
            return None

    def read_soon(self, name: str, policy: BreakerPolicy) -> concurrent.futures.Future[Reply | None] | None:
        """Start reading breaker ``name``'s shared state on a reader thread (for a caller that
        must not block: an event loop); None when Redis is down or the link closed."""
        if not self.up:
            return None
        try:
            return self._readers.submit(self.run, name, policy, "read")
        except RuntimeError:  # closed meanwhile: no reads taken
            return None

    def mark_down(self, exc: BaseException) -> None:
        """Redis failed: callers follow ``on_unavailable`` until the flusher reconnects."""
        if self.up:
            self.up = False
            _log.warning("shared breakers: Redis unavailable (%s); on_unavailable=%s",
                         type(exc).__name__, self.shared.on_unavailable)  # fmt: skip
            self.queue.clear()
            self.settles.clear()  # their leases run out on their own
        self.wake.set()

    def _ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except self._errors:
            return False

    def flush(self) -> bool:
        """Send the queued outcomes: one round trip, each breaker's run of successes folded,
        then the probes' outcomes (each may close or reopen its circuit).

        A batch carries the longest Retry-After of its failures: if they trip the circuit, the
        break lasts at least that long. False if Redis failed (the outcomes are lost).
        """
        queue = self.queue
        batches: dict[tuple[str, int], tuple[Follower, list[str], list[float]]] = {}
        while queue:
            try:
                breaker, gen, outcome, retry_after = queue.popleft()
            except IndexError:  # emptied meanwhile by mark_down() in another thread
                break
            _, seq, after = batches.setdefault((breaker.name, gen), (breaker, [], [0.0]))
            after[0] = max(after[0], retry_after)
            # In consecutive mode successes in a row mean the same as one (the count of failures
            # in a row is reset), unless slow-call tripping counts every call in its window; ratio
            # mode counts every call.
            policy = breaker.policy
            if not (
                outcome == "S" and seq and seq[-1] == "S"
                and policy.mode == "consecutive" and policy.slow_call_threshold is None
            ):  # fmt: skip
                seq.append(outcome)
        ops: list[tuple[Follower, str, str | int, str, str]] = [
            (breaker, "report", gen, "".join(seq), f"{after[0]:.3f}")
            for (_, gen), (breaker, seq, after) in batches.items()
        ]
        settles = self.settles
        while settles:
            try:
                prober, lease, settled, asked = settles.popleft()
            except IndexError:  # emptied meanwhile by mark_down() in another thread
                break
            ops.append((prober, "settle", lease, settled, asked))
        return self._pipeline(ops)

    def refresh(self) -> bool:
        """Re-read every followed breaker and adopt what Redis says.

        Each read carries the version its breaker last adopted: a hash that went back (lost,
        flushed, restored from a snapshot) moves past it and is adopted as it is now, so this
        worker follows it (and its reports count again) within one refresh.
        """
        ops = [(breaker, "read", str(breaker.version), "", "") for breaker in list(self._followers.values())]
        return self._pipeline(ops)

    def _pipeline(self, ops: Sequence[tuple[Follower, str, str | int, str, str]]) -> bool:
        """Run ``ops`` in one round trip and hand each reply to its breaker; False if Redis failed."""
        if not ops:
            return True
        pipe = self.client.pipeline(transaction=False)
        for breaker, op, arg1, arg2, arg3 in ops:
            args = [op, self.channel, self.who, breaker.name, *_args(breaker.policy), arg1, arg2, arg3]
            self.script(keys=[self.key(breaker.name)], args=args, client=pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except self._errors as exc:
            self.mark_down(exc)
            return False
        for (breaker, *_), raw in zip(ops, replies, strict=True):
            if isinstance(raw, self._refusal):
                self.refused(breaker.name, raw)  # tells ``breaker``
            elif isinstance(raw, BaseException):  # anything else in a reply: Redis failing
                self.mark_down(raw)
                return False
            else:
                self._refused.discard(breaker.name)
                breaker.adopt(Reply.parse(raw))
        return True

    def reconnect(self) -> bool:
        """Try Redis once; when it answers, resynchronise every breaker and mark the link up."""
        # The refresh comes before `up`: callers switch over to a current view.
        if not (self._ping() and self.refresh()):
            return False
        self.up = True
        _log.warning("shared breakers: Redis available again")
        for breaker in list(self._followers.values()):
            breaker.reconnected()
        return True

    def pushed(self, message: str) -> None:
        """A published transition: hand it to the breaker it names, if this process has one."""
        *fields, name = message.split("\n", len(Reply._fields))
        breaker = self._followers.get(name)
        if breaker is None:
            return
        try:
            reply = Reply.parse(fields)
        except ValueError:  # not ours: the periodic refresh still brings the state
            return
        breaker.adopt(reply)

    def pubsub(self) -> Any:
        """A subscription to the namespace's channel (redis-py's PubSub)."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(self.channel)
        return pubsub

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What redis-py (and the socket under it) may raise."""
        return self._errors

    def close(self) -> None:
        """Send the outcomes still queued, stop both threads and close the connection.

        For a client's ``close()``: the last batch of reports reaches Redis rather than dying
        with the process. Takes up to :data:`LISTEN_POLL` seconds (the listener ends at its next
        poll) plus ``timeout`` for the last flush (after the flusher's own, if one was under
        way). The link is unusable after; a second close does nothing.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)
        if self.up:
            self.flush()
        self.up = False  # from now on no caller asks Redis (nothing would reconnect)
        self._readers.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def _flush_loop(ref: weakref.ref[RedisLink], stop: threading.Event) -> None:
    """The flusher: outcomes out, refresh, reconnect. Ends with ``stop`` or the link's collection."""
    refreshed = time.monotonic()
    while not stop.is_set():
        link = ref()
        if link is None:
            return
        wake = link.wake
        interval = FLUSH_INTERVAL if link.up else RECONNECT_INTERVAL
        del link  # hold no reference while waiting, so an unused link can be collected
        wake.wait(interval)
        wake.clear()
        link = ref()
        if link is None or stop.is_set():
            return
        try:
            if not link.up:
                if link.reconnect():
                    refreshed = time.monotonic()
                continue
            link.flush()
            if time.monotonic() - refreshed >= REFRESH_INTERVAL and link.up:
                refreshed = time.monotonic()
                link.refresh()
        except Exception as exc:  # a daemon thread outlives anything: down until it reconnects
            link.mark_down(exc)


def _listen_loop(ref: weakref.ref[RedisLink], stop: threading.Event) -> None:
    """The listener: every published transition to its breaker; resubscribes after a failure."""
    pubsub: Any = None
    while not stop.is_set():
        link = ref()
        if link is None:
            break
        try:
            if pubsub is None:
                if not link.up:
                    del link
                    stop.wait(RECONNECT_INTERVAL)
                    continue
                pubsub = link.pubsub()
                # Subscribed now: anything published before is caught by one refresh.
                link.wake.set()
            message = pubsub.get_message(timeout=LISTEN_POLL)
            if message is not None and message.get("type") == "message":
                link.pushed(str(message["data"]))
        except Exception as exc:  # any failure (a redis error or worse): resubscribe later
            link.mark_down(exc)
            _closed(pubsub)
            pubsub = None
        del link
    _closed(pubsub)


def _closed(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:  # closing a broken connection: nothing left to save
            _log.debug("closing the subscription failed", exc_info=True)


class RedisBreakerStorage(pybreaker.CircuitBreakerStorage):
    """A ``pybreaker.CircuitBreakerStorage`` over a shared breaker's Redis hash.

    A plain ``pybreaker.CircuitBreaker(state_storage=...)`` shares its state with every worker
    (and with this library's shared breakers of the same name and namespace): state changes go
    through the same script, so they bump the generation and are published; counters are single
    atomic ``HINCRBY`` commands; ``opened_at`` keeps microseconds. Unlike the library's own
    breakers it makes Redis round trips on every call (that is pybreaker's model), and redis-py
    errors reach pybreaker (which treats a storage error as its own failure). Make one with
    :meth:`connect`::

        storage = RedisBreakerStorage.connect("payments", SharedPolicy(url_env="REDIS_URL"))
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
    """

    @classmethod
    def connect(
        cls, name: str, shared: SharedPolicy, breaker: BreakerPolicy | None = None
    ) -> RedisBreakerStorage:
        """The storage of breaker ``name`` on the Redis ``shared`` names (its ``url``/``url_env``,
        ``namespace`` and ``timeout``); ``breaker`` is the policy our own breakers of that name
        follow (its break and probes), the defaults when None. A missing ``redis`` extra or an
        unset ``url_env`` variable is a :class:`~resilient_openai.ConfigError`."""
        from .._policy import BreakerPolicy

        return cls(connect(shared, background=False), name, breaker or BreakerPolicy())

    def __init__(self, link: RedisLink, name: str, policy: BreakerPolicy) -> None:
        super().__init__(name)
        self._link = link
        self.policy = policy
        self._client = link.client
        self._key = link.key(name)

    @property
    def state(self) -> str:
        return str(self._client.hget(self._key, "state") or CLOSED)

    @state.setter
    def state(self, state: str) -> None:
        args = [
            "set", self._link.channel, self._link.who, self.name, *_args(self.policy), state, "", "",
        ]  # fmt: skip
        self._link.script(keys=[self._key], args=args)

    def close(self) -> None:
        """Close the connection (of a storage made by :meth:`connect`)."""
        self._link.close()

    def increment_counter(self) -> None:
        self._client.hincrby(self._key, "failures", 1)

    def reset_counter(self) -> None:
        self._client.hset(self._key, "failures", 0)

    def increment_success_counter(self) -> None:
        self._client.hincrby(self._key, "successes", 1)

    def reset_success_counter(self) -> None:
        self._client.hset(self._key, "successes", 0)

    @property
    def counter(self) -> int:
        return int(self._client.hget(self._key, "failures") or 0)

    @property
    def success_counter(self) -> int:
        return int(self._client.hget(self._key, "successes") or 0)

    @property
    def opened_at(self) -> datetime | None:
        value = self._client.hget(self._key, "opened_at")
        return datetime.fromtimestamp(float(value), UTC) if value else None

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._client.hset(self._key, "opened_at", f"{value.timestamp():.6f}")
