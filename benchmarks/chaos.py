"""Question 6: does the chain keep its promises under sustained random faults and real concurrency?

For ``--seconds`` (default 60), 16 threads share one resilient ``OpenAI`` client and 200 asyncio
tasks share one resilient ``AsyncOpenAI`` client, at the same time, in one process, on the real
clock, both driven by the shared load driver (:mod:`resilient_openai.testing._load`). Each client
talks to its own :class:`~resilient_openai.testing.FakeUpstream` in process. Every request the
fake receives takes the next fault from a deck drawn with a seeded RNG: healthy answers, 5xx, 429
with and without ``Retry-After`` (short, and longer than the policy accepts), 429
``insufficient_quota``, connection resets, silences (ended by the attempt timeout), slow answers,
stream cuts, stalls (shorter and longer than the idle limit), malformed events, streams without
``[DONE]``, JSON bodies cut or late, and a few 400s. Half the calls stream. The policy is scaled
down to match (a 0.5 s call budget, 0.1 s attempts, 0.1 s breaks) and routes every primary
model to a second model on the same fake, then the cache, then a canned answer.

Streaming and non-streaming calls ask different models (``chaos-stream`` and ``chaos-json``, each
with its own backup model), because a fake's fault queue belongs to a model: stream-body faults
then always land on streams. A truncated JSON body on a non-streaming call is left out of the mix
unless asked for (``--extra-faults``): see :data:`EXTRA_FAULT_ISSUES`.

Each caller thinks a random while between calls: the async path costs a few milliseconds of CPU
per call, and 216 callers calling back to back would keep the one GIL busy for longer than a
call's budget, so the deadline check would measure CPU starvation, not the library.

Every call carries its id in the :data:`CALL_HEADER` header; the fake records it with each
request. As soon as a call ends, its caller takes that call's requests from the fake and checks
the call against them: no waiting for the whole run to be still. Counters that only exist
globally (the Prometheus metrics, the breakers' gauge) are compared once, at the end, when the
driver has returned and no call is in flight.

What is checked (each is one line of the output; any violation makes ``main`` exit 1):

``outcomes``
    Every call ends with an answer (a complete JSON answer, or a stream read to a chunk carrying
    a ``finish_reason``) or an ``openai.OpenAIError`` (the SDK's own, or one of ours from
    ``resilient_openai._errors``). Nothing else escapes.
``provenance``
    Every answer, stream and error the chain returned carries a provenance, and every answer's
    provenance names its source.
``deadline``
    No call lasts longer than ``timeouts.total`` plus :data:`DEADLINE_SLACK` of wall time,
    measured by the driver around the whole call (a stream until its last chunk or its error).
``unrecorded requests``
    Per call and model, the requests the fake received carrying the call's id are never more
    than the call's provenance attempts on that model that were sent (every verdict but
    ``circuit_open`` and ``deadline_exceeded``, which send nothing).
``unsent attempts``
    Per call and model, those attempts are never more than the requests: with the line above,
    every attempt recorded as sent was sent, exactly once.
``breaker rejections``
    Per breaker, Prometheus ``rejections_total`` (one per ``CallRejected`` event) equals the
    number of ``circuit_open`` attempt records naming that breaker.
``metrics``
    ``calls_total`` by source equals the calls whose provenance has that source (errors: no
    source); ``fallbacks_total`` equals the answers not from the primary upstream;
    ``retries_total`` equals the sum over calls and targets of (attempts on the target - 1).
``breaker gauge``
    At the end, the ``breaker_state`` gauge of each breaker shows the breaker's real state.
``memory``
    The heap traced by tracemalloc grows by less than :data:`MEMORY_BOUND` over the last third of
    the run (see :class:`Memory`).

A last line checks the harness itself: every request took a scripted fault (the deck never ran
dry, so no request got the fake's default healthy answer) and belonged to a call.

Run ``python -m benchmarks.chaos [--seconds 60]``. From the benchmark runner: ``result =
chaos.run(seconds=...)``, then ``chaos.report(result)`` is a Markdown section and ``result.ok``
says whether every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import openai
from openai.types.chat import ChatCompletion
from prometheus_client import CollectorRegistry

from resilient_openai import (
    SYSTEM_CLOCK,
    BreakerPolicy,
    CachePolicy,
    FallbackPolicy,
    FallbackStep,
    IncompleteStreamError,
    Policy,
    Provenance,
    RetryPolicy,
    RetryRule,
    Route,
    Timeouts,
    breakers,
    provenance,
    resilient,
)
from resilient_openai.observe.prometheus import BREAKER_STATE_VALUES, PrometheusListener
from resilient_openai.testing import (
    Cut,
    Delay,
    FakeUpstream,
    Fault,
    Malformed,
    Ok,
    RecordedRequest,
    Reset,
    Silence,
    Stall,
    Status,
)
from resilient_openai.testing._load import Call, Load, Outcome, percentile

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

__all__ = [
    "DEADLINE_SLACK",
    "KNOWN_ISSUES",
    "MEMORY_BOUND",
    "TIMEOUTS",
    "ChaosResult",
    "Check",
    "chaos_policy",
    "lines",
    "main",
    "report",
    "run",
]

API_KEY = "sk-chaos-0123456789abcdef"
BASE_URL = "http://chaos.test/v1"
STREAM_MODEL = "chaos-stream"
STREAM_BACKUP = "chaos-stream-backup"
JSON_MODEL = "chaos-json"
JSON_BACKUP = "chaos-json-backup"
STREAM_MODELS = (STREAM_MODEL, STREAM_BACKUP)
JSON_MODELS = (JSON_MODEL, JSON_BACKUP)
#: The header carrying a call's id to the upstream, which records it with each of the call's requests.
CALL_HEADER = "x-chaos-call"
#: Distinct prompts: the cache holds one answer for each, per primary model, and serves many hits.
PROMPTS = tuple(f"chaos prompt {n}: say something short." for n in range(8))
STREAM_SHARE = 0.5

#: The policy's time limits, scaled to faults that last tens of milliseconds.
TIMEOUTS = Timeouts(total=0.5, attempt=0.1, connect=0.05, first_token=0.1, stream_idle=0.05)
#: Wall time a call may take beyond ``TIMEOUTS.total``: 16 threads and an event loop share one
#: GIL, so a call whose deadline fired may still wait its turn to run.
DEADLINE_SLACK = 0.25
#: Growth of traced memory allowed over the last third of the run.
MEMORY_BOUND = 128 * 1024

#: Checks that fail because of a library bug already reported, by check name. ``main`` still
#: fails on them; the test suite marks them as expected failures until the bug is fixed.
KNOWN_ISSUES: Mapping[str, str] = {}
#: What the opt-in extra faults break today (not in the default mix, so no check fails on them).
EXTRA_FAULT_ISSUES: Mapping[str, str] = {}

# Scripted faults per model: refilled to DECK_FULL before a call that finds fewer than DECK_LOW.
# A call makes at most 6 requests, and at most 216 calls are in flight between two refills.
DECK_FULL = 3000
DECK_LOW = 1500
PALETTE_SIZE = 1024


# -- the policy -----------------------------------------------------------------------------------


def chaos_policy(listeners: Sequence[Callable[[Any], None]] = ()) -> Policy:
    """The policy under test: short retries, short breaks, a backup model, the cache, a canned answer."""
    rule = RetryRule(attempts=3, base=0.005, cap=0.04, jitter=0.25)

    def route(backup: str) -> Route:
        return Route(
            steps=(
                FallbackStep("model", model=backup),
                FallbackStep("cache"),
                FallbackStep("canned", text="{model} is unavailable ({reason})."),
            )
        )

    return Policy(
        retry=RetryPolicy(
            rules=dict.fromkeys(RetryPolicy().rules, rule), max_retry_after=0.2, max_open_wait=0.05
        ),
        timeouts=TIMEOUTS,
        breaker=BreakerPolicy(
            fail_max=5,
            break_duration=0.1,
            break_multiplier=2.0,
            break_max=0.5,
            half_open_probes=2,
            probe_lease=1.0,
            quota_break=0.3,
        ),
        fallback=FallbackPolicy(routes={STREAM_MODEL: route(STREAM_BACKUP), JSON_MODEL: route(JSON_BACKUP)}),
        cache=CachePolicy(max_entries=256),
        listeners=tuple(listeners),
    )


# -- the fault deck -------------------------------------------------------------------------------

FaultMaker = Callable[[random.Random], Fault]


def _tokens(rng: random.Random) -> int:
    return rng.randint(3, 10)


def _stream_cut(rng: random.Random) -> Fault:
    tokens = _tokens(rng)
    return Cut(rng.randint(0, tokens), tokens=tokens)


def _stream_stall(rng: random.Random) -> Fault:
    tokens = _tokens(rng)
    # 20 ms stays under the 50 ms idle limit (a slow but healthy stream); 100 ms stalls out.
    return Stall(rng.randint(0, tokens), rng.choice((0.02, 0.1)), tokens=tokens)


def _malformed_event(rng: random.Random) -> Fault:
    tokens = _tokens(rng)
    return Malformed(rng.randrange(tokens), tokens=tokens)


def _retry_after_ms(rng: random.Random) -> Fault:
    return Status(429, headers={"retry-after-ms": str(rng.randint(5, 40))})


def _retry_after(rng: random.Random) -> Fault:
    return Status(429, headers={"retry-after": f"{rng.uniform(0.005, 0.04):.3f}"})


def _quota(rng: random.Random) -> Fault:
    return Status(429, code_str="insufficient_quota", type="insufficient_quota")


#: (name, weight, maker) for faults that make sense on any request.
COMMON_FAULTS: tuple[tuple[str, int, FaultMaker], ...] = (
    ("ok", 40, lambda rng: Ok(tokens=_tokens(rng), latency=rng.uniform(0.0, 0.03))),
    ("slow", 5, lambda rng: Delay(rng.uniform(0.01, 0.04), Ok(tokens=_tokens(rng)))),
    ("too slow", 2, lambda rng: Delay(0.15)),
    ("5xx", 8, lambda rng: Status(rng.choice((500, 502, 503, 504)))),
    ("429", 4, lambda rng: Status(429)),
    ("429 retry-after-ms", 2, _retry_after_ms),
    ("429 retry-after", 2, _retry_after),
    ("429 retry-after too long", 1, lambda rng: Status(429, headers={"retry-after": "5"})),
    ("429 insufficient_quota", 1, _quota),
    ("reset", 4, lambda rng: Reset()),
    ("silence", 2, lambda rng: Silence()),
    ("400", 1, lambda rng: Status(400)),
)

#: Faults of a streamed body.
STREAM_FAULTS: tuple[tuple[str, int, FaultMaker], ...] = (
    ("stream cut", 4, _stream_cut),
    ("stream stall", 3, _stream_stall),
    ("malformed event", 3, _malformed_event),
    ("no [DONE]", 2, lambda rng: Ok(tokens=_tokens(rng), done=False)),
)

#: Faults of a JSON body: cut halfway, or late (within, then beyond, the attempt timeout).
JSON_FAULTS: tuple[tuple[str, int, FaultMaker], ...] = (
    ("body cut", 3, lambda rng: Cut(0)),
    ("body stall", 3, lambda rng: Stall(0, rng.choice((0.02, 0.15)))),
)

#: Opt-in (``extra_faults``): a truncated JSON body on a non-streaming answer, which the chain
#: does not handle today (see :data:`EXTRA_FAULT_ISSUES`).
EXTRA_JSON_FAULTS: tuple[tuple[str, int, FaultMaker], ...] = (
    ("malformed body", 2, lambda rng: Malformed(0)),
)


def palette(
    kinds: Iterable[tuple[str, int, FaultMaker]], rng: random.Random, size: int = PALETTE_SIZE
) -> list[tuple[str, Fault]]:
    """``size`` named faults drawn by weight from ``kinds``; the deck then picks among them.

    Faults are immutable, so a fixed palette keeps the queued faults' memory constant.
    """
    table = list(kinds)
    names = [name for name, _, _ in table]
    makers = {name: maker for name, _, maker in table}
    drawn = rng.choices(names, weights=[weight for _, weight, _ in table], k=size)
    return [(name, makers[name](rng)) for name in drawn]


class _Deck:
    """Keeps every chaos model's fault queue on one fake upstream from running dry (thread-safe).

    It names each fault it scripts, so a recorded request's fault tells which kind answered it.
    """

    def __init__(self, upstream: FakeUpstream, seed: str, *, extra: bool = False) -> None:
        rng = random.Random(f"{seed}:palette")
        self._upstream = upstream
        self._rng = random.Random(f"{seed}:draws")
        stream = palette((*COMMON_FAULTS, *STREAM_FAULTS), rng)
        plain = palette((*COMMON_FAULTS, *JSON_FAULTS, *(EXTRA_JSON_FAULTS if extra else ())), rng)
        self._palettes = {**dict.fromkeys(STREAM_MODELS, stream), **dict.fromkeys(JSON_MODELS, plain)}
        # By identity: the fake records the very instance it took from the queue.
        self._names = {id(fault): name for name, fault in (*stream, *plain)}
        self._lock = threading.Lock()

    def top_up(self) -> None:
        """Refill every queue holding fewer than :data:`DECK_LOW` faults back to :data:`DECK_FULL`."""
        for model, choices in self._palettes.items():
            if self._upstream.pending(model) >= DECK_LOW:
                continue
            with self._lock:
                missing = DECK_FULL - self._upstream.pending(model)
                drawn = [choices[self._rng.randrange(len(choices))][1] for _ in range(max(missing, 0))]
                self._upstream.script(model, drawn)

    def name(self, fault: Fault | None) -> str | None:
        """The name of a fault this deck scripted; None for any other (the fake's default)."""
        return self._names.get(id(fault))


# -- one side: a client, its fake, and every call checked as it ends -------------------------------

_EXAMPLES = 3
_LIMIT = TIMEOUTS.total + DEADLINE_SLACK


@dataclass
class _Tally:
    """What one side's calls showed, call by call. Bounded but for one duration per call."""

    calls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    requests: int = 0
    sent: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    #: Violations by check name, and a few examples of each.
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def problem(self, check: str, example: str) -> None:
        self.problems[check] += 1
        kept = self.examples.setdefault(check, [])
        if len(kept) < _EXAMPLES:
            kept.append(example)


def _label(error: BaseException) -> str:
    name = type(error).__name__
    if isinstance(error, IncompleteStreamError):
        return f"{name}/{error.reason}"
    return name


def _attempts(record: Provenance) -> str:
    return ", ".join(f"{a.model}#{a.attempt} {a.verdict} {a.duration * 1000:.0f}ms" for a in record.attempts)


def _story(record: Provenance | None, error: BaseException | None) -> str:
    head = f"error {_label(error)}" if error is not None else "answer"
    if record is None:
        return head
    return f"{head} from {record.source}, attempts: {_attempts(record)}"


def _request(seed: int, call: str) -> tuple[bool, str, list[ChatCompletionMessageParam]]:
    """Whether the call streams, its model and its prompt: drawn from its id, so always the same."""
    rng = random.Random(f"{seed}:{call}")
    stream = rng.random() < STREAM_SHARE
    prompt = PROMPTS[rng.randrange(len(PROMPTS))]
    return stream, STREAM_MODEL if stream else JSON_MODEL, [{"role": "user", "content": prompt}]


def _complete(answer: object) -> bool:
    """Whether a non-streamed answer is a whole chat completion, finished, with text."""
    return (
        isinstance(answer, ChatCompletion)
        and bool(answer.choices)
        and answer.choices[0].finish_reason is not None
        and isinstance(answer.choices[0].message.content, str)
    )


class _Side:
    """One client flavour under chaos: its fake upstream, fault deck, metrics, and the call checks."""

    def __init__(self, name: str, seed: int, *, extra_faults: bool = False) -> None:
        self.name = name
        self.seed = seed
        self.upstream = FakeUpstream(clock=SYSTEM_CLOCK)
        self.deck = _Deck(self.upstream, f"{seed}:{name}", extra=extra_faults)
        self.registry = CollectorRegistry()
        self.policy = chaos_policy([PrometheusListener(self.registry)])
        self.tally = _Tally()
        self.peak = 0
        self._lock = threading.Lock()
        #: Streams of the calls in flight by call id (an error raised while reading one carries no
        #: provenance: the stream does), and those read to a chunk carrying a finish_reason.
        self._streams: dict[str, object] = {}
        self._finished: set[str] = set()

    def sync_call(self, client: openai.OpenAI) -> Callable[[Call], object]:
        """One chaos call through ``client``, for the driver's threads."""

        def call(handed: Call) -> object:
            self.deck.top_up()
            stream, model, messages = _request(self.seed, handed.id)
            headers = {CALL_HEADER: handed.id}
            if not stream:
                return client.chat.completions.create(model=model, messages=messages, extra_headers=headers)
            chunks = client.chat.completions.create(
                model=model, messages=messages, stream=True, extra_headers=headers
            )
            self._streams[handed.id] = chunks
            with chunks:
                if [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]:
                    self._finished.add(handed.id)
            return chunks

        return call

    def async_call(self, client: openai.AsyncOpenAI) -> Callable[[Call], Awaitable[object]]:
        """The asyncio twin of :meth:`sync_call`, for the driver's tasks."""

        async def call(handed: Call) -> object:
            self.deck.top_up()
            stream, model, messages = _request(self.seed, handed.id)
            headers = {CALL_HEADER: handed.id}
            if not stream:
                return await client.chat.completions.create(
                    model=model, messages=messages, extra_headers=headers
                )
            chunks = await client.chat.completions.create(
                model=model, messages=messages, stream=True, extra_headers=headers
            )
            self._streams[handed.id] = chunks
            async with chunks:
                if [c async for c in chunks if c.choices and c.choices[0].finish_reason is not None]:
                    self._finished.add(handed.id)
            return chunks

        return call

    def settle(self, outcome: Outcome) -> None:
        """Check one call as soon as it ends, against the requests the fake saw with its id."""
        call = outcome.call.id
        requests = self.upstream.take(CALL_HEADER, call)
        stream, _, _ = _request(self.seed, call)
        kind = "stream" if stream else "json"
        record, error, result = outcome.provenance, outcome.error, outcome.result
        with self._lock:
            streamed = self._streams.pop(call, None)
            finished = call in self._finished
            self._finished.discard(call)
            record = record or provenance(streamed)
            tally = self.tally
            tally.calls += 1
            tally.durations.append(outcome.latency)
            if outcome.latency > _LIMIT:
                tally.problem(
                    "deadline", f"{kind} call {call} took {outcome.latency:.3f}s: {_story(record, error)}"
                )
            if error is None:
                tally.outcomes[f"answer:{record.source if record else '?'}"] += 1
                if not (finished if stream else _complete(result)):
                    tally.problem("outcomes", f"{kind} call {call} ended without a finish_reason")
            elif isinstance(error, openai.OpenAIError):
                tally.outcomes[f"error:{_label(error)}"] += 1
            else:
                tally.outcomes[f"escaped:{type(error).__module__}.{type(error).__qualname__}"] += 1
                trace = "".join(traceback.format_exception(error, limit=-3)).strip().replace("\n", " | ")
                tally.problem("outcomes", f"{kind} call {call}: {trace}")
            for request in requests:
                tally.faults[self.deck.name(request.fault) or "(none scripted)"] += 1
                if self.deck.name(request.fault) is None:
                    tally.problem("harness", f"a request of call {call} took no scripted fault")
            tally.requests += len(requests)
            if record is None or (error is None and record.source is None):
                what = (
                    "nothing to read it from"
                    if record is None
                    else "an answer whose provenance has no source"
                )
                tally.problem("provenance", f"{kind} call {call}: {what} ({_story(record, error)})")
            if record is not None:
                tally.sources[record.source or ""] += 1
            self._match_locked(call, record, requests)

    def _match_locked(self, call: str, record: Provenance | None, requests: list[RecordedRequest]) -> None:
        """Compare the call's attempt records with the requests the fake received for it."""
        tally = self.tally
        sent: Counter[str] = Counter()
        per_target: Counter[str] = Counter()
        for attempt in record.attempts if record is not None else ():
            per_target[attempt.target] += 1
            if attempt.verdict == "circuit_open":
                tally.rejections[attempt.target] += 1
            elif attempt.verdict != "deadline_exceeded":  # refused before sending, like a rejection
                sent[attempt.model or ""] += 1
        tally.retries += sum(count - 1 for count in per_target.values())
        tally.sent += sum(sent.values())
        seen = Counter(request.model or "" for request in requests)
        story = _attempts(record) if record is not None else "no provenance"
        for model in sent.keys() | seen.keys():
            if seen[model] > sent[model]:
                tally.problem(
                    "unrecorded requests", f"call {call}: {seen[model]} request(s) to {model}; {story}"
                )
            elif sent[model] > seen[model]:
                tally.problem("unsent attempts", f"call {call}: {seen[model]} request(s) to {model}; {story}")


# -- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant: its name, whether it held, and the numbers behind it."""

    name: str
    ok: bool
    detail: str
    examples: tuple[str, ...] = ()

    @property
    def known_issue(self) -> str | None:
        """The reported library bug this check fails on, if it is a known one."""
        return KNOWN_ISSUES.get(self.name)


@dataclass(frozen=True, slots=True)
class SideResult:
    """One client flavour's totals, its metrics and breaker states at the end."""

    name: str
    workers: int
    stats: _Tally
    peak: int
    metrics: Mapping[str, Mapping[tuple[str, ...], float]]
    breaker_states: Mapping[str, str]
    stray_requests: int


@dataclass(frozen=True, slots=True)
class Memory:
    """What tracemalloc saw over the last third of the run.

    The run is three driver runs back to back on the same clients; between two, no call is in
    flight. Tracing starts with the second, short one (so that state the chain keeps replacing,
    such as cached answers and breaker causes, is traced by its end); ``growth`` is the traced
    heap after the third minus the one after the second, both after a full collection, leaving
    out what the fake upstream and this harness allocate. Every breaker is reset just before both
    measurements: an open one keeps the failure that opened it, traceback and all, and how many
    are open at a given moment is chance.
    """

    growth: int
    top: tuple[str, ...]  # the allocation sites that grew most
    calls: int  # calls made over the last third


@dataclass(frozen=True, slots=True)
class ChaosResult:
    """Everything one chaos run measured, and the checks made on it."""

    seconds: float
    seed: int
    sides: tuple[SideResult, ...]
    memory: Memory
    loop_lag: float
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return all(check.ok for check in self.checks)

    @property
    def calls(self) -> int:
        """Calls made on both sides."""
        return sum(side.stats.calls for side in self.sides)

    @property
    def outcomes(self) -> Counter[str]:
        """Calls by outcome (``answer:<source>``, ``error:<type>``, ``escaped:<type>``), both sides."""
        return sum((side.stats.outcomes for side in self.sides), Counter())

    @property
    def faults(self) -> Counter[str]:
        """Requests by the name of the fault that answered them, both sides."""
        return sum((side.stats.faults for side in self.sides), Counter())


def _metric(registry: CollectorRegistry, name: str, labels: Sequence[str]) -> dict[tuple[str, ...], float]:
    """The samples of one metric from ``registry``, by the values of ``labels``."""
    found: dict[tuple[str, ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                key = tuple(sample.labels.get(label, "") for label in labels)
                found[key] = found.get(key, 0.0) + sample.value
    return found


_NS = "resilient_openai_"
#: Think times are multiplied by this while tracemalloc runs: tracing every allocation makes a
#: call about 5 to 10 times as expensive, and the same offered load would starve the event loop.
TRACE_PACE = 10.0
#: Allocations made by these files are the harness's, not the library's.
_HARNESS_FILES = ("*/resilient_openai/testing/*", __file__, tracemalloc.__file__)


def _heap(clients: Iterable[object]) -> dict[str, int]:
    """Traced bytes by allocation site once every breaker is reset and garbage collected.

    The harness's own allocations are left out (see :data:`_HARNESS_FILES`); only these totals
    are kept, never the snapshot, whose millions of trace tuples would stall the next collection.
    """
    for client in clients:
        for breaker in breakers(client):
            breaker.reset()
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pattern) for pattern in _HARNESS_FILES]
    )
    return {
        f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}": stat.size
        for stat in snapshot.statistics("lineno")
    }


def _growth(before: Mapping[str, int], after: Mapping[str, int]) -> tuple[int, tuple[str, ...]]:
    """Bytes the heap grew from ``before`` to ``after``, and the sites that grew most."""
    diff = {site: after.get(site, 0) - before.get(site, 0) for site in before.keys() | after.keys()}
    top = sorted(diff.items(), key=lambda item: -item[1])[:5]
    return sum(diff.values()), tuple(f"{size / 1024:+.1f} KiB at {site}" for site, size in top if size > 0)


@dataclass
class _Loop:
    """The event loop's thread for one stretch, and how late it ran a 10 ms timer at worst."""

    lag: float = 0.0
    errors: list[BaseException] = field(default_factory=list)

    def run(self, load: Load, call: Callable[[Call], Awaitable[object]], tasks: int) -> threading.Thread:
        """Start ``tasks`` callers on a new loop in a new thread, with a lag watcher."""

        async def main() -> None:
            watcher = asyncio.create_task(self._watch())
            try:
                await load.run_tasks(call, tasks)
            finally:
                watcher.cancel()

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # re-raised by run() in the main thread
                self.errors.append(exc)
                load.stop()

        thread = threading.Thread(target=target, name="chaos-loop", daemon=True)
        thread.start()
        return thread

    async def _watch(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            self.lag = max(self.lag, time.monotonic() - started - 0.01)


def run(
    *,
    seconds: float = 60.0,
    threads: int = 16,
    tasks: int = 200,
    think_threads: float = 0.06,
    think_tasks: float = 2.0,
    seed: int = 1,
    extra_faults: bool = False,
) -> ChaosResult:
    """Run the chaos for ``seconds`` and check every invariant (see the module docs).

    Each thread pauses a random 0 to 2 x ``think_threads`` seconds between calls, each task 0 to
    2 x ``think_tasks``: the async path costs a few milliseconds of CPU per call, and 200 tasks
    calling back to back would keep the one event loop busy for longer than the call budget, so
    the deadline check would measure CPU starvation instead of the library. ``extra_faults`` adds
    :data:`EXTRA_JSON_FAULTS` to the mix.
    """
    sync_side = _Side("sync", seed, extra_faults=extra_faults)
    async_side = _Side("async", seed, extra_faults=extra_faults)
    sync_client = resilient(
        openai.OpenAI(
            api_key=API_KEY,
            base_url=BASE_URL,
            max_retries=0,
            http_client=httpx2.Client(transport=sync_side.upstream.transport()),
        ),
        sync_side.policy,
    )
    async_client = resilient(
        openai.AsyncOpenAI(
            api_key=API_KEY,
            base_url=BASE_URL,
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=async_side.upstream.async_transport()),
        ),
        async_side.policy,
    )
    loop = _Loop()
    clients = (sync_client, async_client)

    def stretch(index: int, length: float, pace: float) -> None:
        """Drive both sides for ``length`` seconds; returns once every call has ended."""
        sync_load, async_load = (
            Load(
                duration=length,
                think=think,
                seed=f"{seed}:{side.name}:{index}",
                on_outcome=side.settle,
                keep=False,
            )
            for side, think in ((sync_side, think_threads), (async_side, think_tasks))
        )
        sync_load.pace = async_load.pace = pace
        loop_thread = loop.run(async_load, async_side.async_call(async_client), tasks)
        sync_load.run_threads(sync_side.sync_call(sync_client), threads)
        loop_thread.join()
        if loop.errors:
            raise loop.errors[0]
        sync_side.peak = max(sync_side.peak, sync_load.peak)
        async_side.peak = max(async_side.peak, async_load.peak)

    # Three stretches back to back: untraced, a short traced warm-up, then the traced last third.
    warm = min(seconds / 12, 3.0)
    started = time.monotonic()
    try:
        stretch(0, seconds * 2 / 3 - warm, 1.0)
        tracemalloc.start()
        stretch(1, warm, TRACE_PACE)
        baseline, calls_at_baseline = _heap(clients), sync_side.tally.calls + async_side.tally.calls
        stretch(2, seconds / 3, TRACE_PACE)
        elapsed = time.monotonic() - started
        # Read before _heap resets the breakers.
        sides = (
            SideResult(
                sync_side.name, threads, sync_side.tally, sync_side.peak, *_end_state(sync_side, sync_client)
            ),
            SideResult(
                async_side.name,
                tasks,
                async_side.tally,
                async_side.peak,
                *_end_state(async_side, async_client),
            ),
        )
        growth, top = _growth(baseline, _heap(clients))
    finally:
        tracemalloc.stop()
        sync_client.close()
        asyncio.run(async_client.close())
    memory = Memory(growth, top, sum(side.stats.calls for side in sides) - calls_at_baseline)
    return ChaosResult(elapsed, seed, sides, memory, loop.lag, tuple(_checks(sides, memory)))


def _end_state(
    side: _Side, client: object
) -> tuple[Mapping[str, Mapping[tuple[str, ...], float]], Mapping[str, str], int]:
    """One side's metrics, breaker states and requests no call took, once every call has ended."""
    metrics = {
        "calls": _metric(side.registry, f"{_NS}calls_total", ["source"]),
        "fallbacks": _metric(side.registry, f"{_NS}fallbacks_total", []),
        "retries": _metric(side.registry, f"{_NS}retries_total", []),
        "rejections": _metric(side.registry, f"{_NS}rejections_total", ["breaker"]),
        "breaker_state": _metric(side.registry, f"{_NS}breaker_state", ["breaker"]),
    }
    return metrics, {breaker.name: breaker.state for breaker in breakers(client)}, side.upstream.count()


# -- the checks (pure) ----------------------------------------------------------------------------

#: The checks made call by call, and what their detail line says.
_PER_CALL = {
    "outcomes": "calls ended with something other than a complete answer or an openai.OpenAIError",
    "provenance": "answers or errors without a provenance (or an answer without a source)",
    "deadline": f"calls over {TIMEOUTS.total:g} s total + {DEADLINE_SLACK:g} s slack",
    "unrecorded requests": "calls whose requests to a model outnumber their attempts recorded as sent",
    "unsent attempts": "calls whose attempts recorded as sent to a model outnumber their requests",
}


def _checks(sides: Sequence[SideResult], memory: Memory) -> list[Check]:
    problems: Counter[str] = sum((side.stats.problems for side in sides), Counter())
    examples = {name: [e for side in sides for e in side.stats.examples.get(name, [])] for name in problems}
    durations = [d for side in sides for d in side.stats.durations]
    calls = sum(side.stats.calls for side in sides)
    checks = []
    for name, what in _PER_CALL.items():
        detail = f"{problems[name]} of {calls} {what}"
        if name == "deadline":
            detail += (
                f"; slowest {max(durations, default=0.0):.3f} s, p99 {percentile(durations, 99, 0.0):.3f} s"
            )
        if name == "unsent attempts":
            sent, requests = (sum(getattr(side.stats, n) for side in sides) for n in ("sent", "requests"))
            detail += f"; {sent} attempts recorded as sent, {requests} requests"
        checks.append(Check(name, not problems[name], detail, tuple(examples.get(name, ()))))
    checks += [_rejections_check(sides), _metrics_check(sides), _gauge_check(sides)]
    checks.append(
        Check(
            "memory",
            memory.growth < MEMORY_BOUND,
            f"the heap grew {memory.growth / 1024:+.1f} KiB over the last third's {memory.calls} calls "
            f"(bound {MEMORY_BOUND // 1024} KiB)",
            memory.top,
        )
    )
    stray = [
        f"{side.name}: {side.stray_requests} requests no call took" for side in sides if side.stray_requests
    ]
    harness = [*examples.get("harness", []), *stray]
    checks.append(
        Check(
            "harness",
            not harness,
            "every request took a scripted fault and belonged to a call"
            if not harness
            else "the harness misbehaved",
            tuple(harness),
        )
    )
    return checks


def _rejections_check(sides: Sequence[SideResult]) -> Check:
    problems = []
    for side in sides:
        metric = {key[0]: value for key, value in side.metrics["rejections"].items()}
        for name in side.stats.rejections.keys() | metric.keys():
            if metric.get(name, 0.0) != side.stats.rejections[name]:
                records = side.stats.rejections[name]
                problems.append(f"{side.name} {name}: metric {metric.get(name, 0.0):g}, records {records}")
    total = sum(sum(side.stats.rejections.values()) for side in sides)
    detail = f"{total} circuit_open attempt records; rejections_total " + (
        "disagrees" if problems else "agrees for every breaker"
    )
    return Check("breaker rejections", not problems, detail, tuple(problems))


def _metrics_check(sides: Sequence[SideResult]) -> Check:
    problems = []
    for side in sides:
        stats, metrics = side.stats, side.metrics
        calls = {key[0]: value for key, value in metrics["calls"].items()}
        for source in calls.keys() | stats.sources.keys():
            if calls.get(source, 0.0) != stats.sources[source]:
                problems.append(
                    f"{side.name}: calls_total{{source={source!r}}} = {calls.get(source, 0.0):g}, "
                    f"provenance says {stats.sources[source]}"
                )
        fallbacks = sum(metrics["fallbacks"].values())
        served = sum(n for source, n in stats.sources.items() if source not in ("", "upstream"))
        if fallbacks != served:
            problems.append(f"{side.name}: fallbacks_total = {fallbacks:g}, provenance says {served}")
        retries = sum(metrics["retries"].values())
        if retries != stats.retries:
            problems.append(f"{side.name}: retries_total = {retries:g}, attempt records say {stats.retries}")
    return Check(
        "metrics",
        not problems,
        "calls_total, fallbacks_total and retries_total agree with provenance"
        if not problems
        else f"{len(problems)} disagreements",
        tuple(problems),
    )


def _gauge_check(sides: Sequence[SideResult]) -> Check:
    problems = []
    for side in sides:
        gauge = {key[0]: value for key, value in side.metrics["breaker_state"].items()}
        for name, state in side.breaker_states.items():
            shown = gauge.get(name, 0.0)  # never moved: no sample yet, which reads as closed
            if shown != BREAKER_STATE_VALUES[state]:
                problems.append(f"{side.name} {name}: gauge {shown:g}, breaker {state}")
    count = sum(len(side.breaker_states) for side in sides)
    return Check(
        "breaker gauge",
        not problems,
        f"breaker_state shows the real state of all {count} breakers"
        if not problems
        else f"{len(problems)} of {count} breakers shown in the wrong state",
        tuple(problems),
    )


# -- reporting ------------------------------------------------------------------------------------


def _callers(side: SideResult) -> str:
    return f"{side.workers} {'threads' if side.name == 'sync' else 'tasks'} ({side.name})"


def _summary(result: ChaosResult) -> list[str]:
    out = []
    for side in result.sides:
        stats = side.stats
        outcomes = ", ".join(f"{name} {count}" for name, count in stats.outcomes.most_common())
        p50, p99 = (percentile(stats.durations, q, 0.0) * 1000 for q in (50, 99))
        out.append(
            f"{side.name}: {stats.calls} calls ({stats.calls / max(result.seconds, 1e-9):.0f}/s, "
            f"{side.peak} in flight at most), {stats.requests} requests upstream, p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms; {outcomes}"
        )
    out.append(
        f"memory: {result.memory.growth / 1024:+.1f} KiB over the last third "
        f"({result.memory.calls} calls); event-loop lag up to {result.loop_lag * 1000:.0f} ms"
    )
    out.append(
        "faults served: " + ", ".join(f"{name} {count}" for name, count in result.faults.most_common())
    )
    return out


def lines(result: ChaosResult) -> list[str]:
    """The plain-text report: a summary, then one PASS / FAIL line per check."""
    out = [f"chaos: {result.seconds:.1f} s, seed {result.seed}, " + " + ".join(map(_callers, result.sides))]
    out += [f"  {line}" for line in _summary(result)]
    for check in result.checks:
        out.append(f"{'PASS' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        if not check.ok:
            if check.known_issue:
                out.append(f"    known library bug: {check.known_issue}")
            out.extend(f"    {example}" for example in check.examples[:8])
    return out


def report(result: ChaosResult) -> str:
    """The Markdown section for RESULTS.md."""
    rows = [f"| {c.name} | {'pass' if c.ok else '**FAIL**'} | {c.detail} |" for c in result.checks]
    return "\n".join(
        [
            "## 6. Chaos: sustained random faults, real concurrency",
            "",
            f"{result.seconds:.0f} s on the real clock, seed {result.seed}, "
            + " and ".join(map(_callers, result.sides))
            + f" at once; policy total {TIMEOUTS.total:g} s, attempt {TIMEOUTS.attempt:g} s, "
            f"stream idle {TIMEOUTS.stream_idle:g} s, deadline slack {DEADLINE_SLACK:g} s.",
            "",
            *(f"- {line}" for line in _summary(result)),
            "",
            "| check | result | detail |",
            "| :--- | :--- | :--- |",
            *rows,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.chaos [--seconds 60]``: run, print the checks, exit 1 on a violation."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description="Random faults under real concurrency, checked."
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--threads", type=int, default=16, help="threads on the sync client (default 16)")
    parser.add_argument("--tasks", type=int, default=200, help="tasks on the async client (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault deck and the callers")
    parser.add_argument(
        "--extra-faults",
        action="store_true",
        help="also truncate JSON bodies (known to fail today, see EXTRA_FAULT_ISSUES)",
    )
    args = parser.parse_args(argv)
    result = run(
        seconds=args.seconds,
        threads=args.threads,
        tasks=args.tasks,
        seed=args.seed,
        extra_faults=args.extra_faults,
    )
    for line in lines(result):
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
