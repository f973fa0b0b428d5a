"""The chaos run, short: random faults under real concurrency, every invariant checked.

The full run is ``python -m benchmarks.chaos`` (60 s); this is the same run and the same checks
for 2 s with fewer callers, on the real clock.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from resilient_openai import (
    BreakerPolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    Route,
    Timeouts,
    provenance,
)
from resilient_openai.testing import Silence
from resilient_openai.testing._load import Call, Outcome

from .conftest import Harness


def _load_chaos() -> ModuleType:
    """``benchmarks/chaos.py``, loaded from its path: the repository root is not on sys.path."""
    name = "benchmarks.chaos"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from benchmarks import chaos
else:
    chaos = _load_chaos()


@pytest.fixture(scope="module")
def result() -> chaos.ChaosResult:
    """One short chaos run, shared by the tests below (about 2.5 s)."""
    return chaos.run(seconds=2.0, threads=6, tasks=40, think_threads=0.03, think_tasks=0.3, seed=7)


def test_every_invariant_holds(result: chaos.ChaosResult) -> None:
    """Every check passes, except one failing on an already reported library bug."""
    failed = [check.name for check in result.checks if not check.ok and check.known_issue is None]
    assert not failed, "\n".join(chaos.lines(result))


def test_the_faults_reached_the_callers(result: chaos.ChaosResult) -> None:
    """The run was not all sunshine: fallbacks answered, breakers rejected, streams broke."""
    outcomes = result.outcomes
    assert result.calls >= 100
    assert outcomes["answer:fallback_model"] > 0
    assert sum(n for name, n in outcomes.items() if name.startswith("error:IncompleteStreamError")) > 0
    assert sum(sum(side.stats.rejections.values()) for side in result.sides) > 0


def test_a_call_that_breaks_its_promises_fails_its_checks() -> None:
    """A call checked by its id: an escaped exception, no provenance and a blown deadline all count."""
    side = chaos._Side("sync", seed=1)
    side.settle(Outcome(Call("t0.1", 0, 0.0), 0.0, 1.0, None, RuntimeError("boom"), None))
    assert side.tally.problems == {"outcomes": 1, "provenance": 1, "deadline": 1}


def test_an_attempt_refused_for_the_deadline_is_not_recorded_as_sent(harness: Harness) -> None:
    """A fallback rung reached after the deadline sends nothing, and its provenance says so."""
    harness.upstream.set_default("gpt-A", Silence())
    route = Route(
        steps=(FallbackStep(kind="model", model="gpt-B"), FallbackStep(kind="canned", text="sorry"))
    )
    policy = Policy(
        retry=RetryPolicy(rules={}),
        # The primary's silence lasts the whole budget: the backup is reached with none left.
        timeouts=Timeouts(total=2.0, attempt=2.0, connect=1.0, first_token=2.0, stream_idle=2.0),
        breaker=BreakerPolicy(fail_max=1),
        fallback=FallbackPolicy(routes={"gpt-A": route}),
    )
    answer = harness.chat(harness.client(policy))
    record = provenance(answer)
    assert record is not None
    assert record.source == "canned"
    assert harness.upstream.count(model="gpt-B") == 0
    unsent = ("circuit_open", "deadline_exceeded")
    sent_to_backup = [a for a in record.attempts if a.model == "gpt-B" and a.verdict not in unsent]
    assert sent_to_backup == []
