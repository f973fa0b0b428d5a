"""Policies built in code, and the code passed to resilient(): refused at once, in the file's words."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx2
import openai
import pydantic
import pytest

from resilient_openai import resilient
from resilient_openai._classify import Verdict
from resilient_openai._errors import ConfigError
from resilient_openai._policy import (
    BreakerPolicy,
    CachePolicy,
    FallbackPolicy,
    FallbackStep,
    Policy,
    RetryPolicy,
    RetryRule,
    Route,
    Target,
    Timeouts,
    ValidationPolicy,
)
from resilient_openai.testing import FakeClock, FakeUpstream

KEY_ENV = "RO_TEST_TARGET_KEY"
MISSING_ENV = "RO_TEST_NEVER_SET"
SECRET = "sk-proj-THIS-MUST-NEVER-BE-PRINTED"
CLIENT = openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1")
ASYNC_CLIENT = openai.AsyncOpenAI(api_key="sk-test", base_url="http://fake.test/v1")


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees one target key variable set and one known to be absent."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.delenv(MISSING_ENV, raising=False)


def _answer(body: Mapping[str, Any], reason: str) -> str:
    """A fallback function: a fixed answer."""
    return "fallback answer"


def _listener(event: object) -> None:
    """A listener that ignores every event."""


def problems_of(build: Callable[[], object]) -> tuple[str, ...]:
    """The problems the ConfigError raised by ``build()`` lists."""
    with pytest.raises(ConfigError) as info:
        build()
    return info.value.problems


def routed(*steps: FallbackStep, **route: Any) -> Policy:
    """A policy with target ``azure`` (built from a key variable) and one route for ``gpt-4o``."""
    targets = {"azure": Target(name="azure", base_url="https://azure.test/v1", api_key_env=KEY_ENV)}
    routes = {"gpt-4o": Route(steps=steps, **route)}
    return Policy(fallback=FallbackPolicy(routes=routes, targets=targets))


def step(kind: Any, **fields: Any) -> FallbackStep:
    """A FallbackStep without the type checker's help (code that was never type-checked)."""
    return FallbackStep(kind=kind, **fields)


def untyped(cls: Callable[..., object], **fields: Any) -> Callable[[], object]:
    """Build ``cls(**fields)`` later, without the type checker's help."""
    return lambda: cls(**fields)


# (what builds the object, the key path the one problem must name, a fragment of what it must say)
ONE_MISTAKE: list[Any] = [
    pytest.param(
        lambda: BreakerPolicy(fail_max=0), "fail_max", "must be an integer >= 1, got 0", id="fail-max-zero"
    ),
    pytest.param(
        # Equal to the default (5 == 5.0) but not an integer: refused, as in a file.
        untyped(BreakerPolicy, fail_max=5.0),
        "fail_max",
        "must be an integer >= 1, got 5.0",
        id="fail-max-float",
    ),
    pytest.param(
        untyped(BreakerPolicy, mode="ratios"),
        "mode",
        "must be one of 'consecutive', 'ratio', got 'ratios'",
        id="breaker-mode",
    ),
    pytest.param(
        lambda: BreakerPolicy(failure_verdicts=frozenset({Verdict.SUCCESS})),
        "failure_verdicts[0]",
        "'success' says nothing about the target's health",
        id="failure-verdict-success",
    ),
    pytest.param(
        lambda: BreakerPolicy(break_duration=600.0, break_max=300.0),
        "break_max",
        "must be >= break_duration (600.0)",
        id="break-duration-over-max",
    ),
    pytest.param(lambda: Timeouts(total=-1.0), "total", "must be a number > 0, got -1.0", id="total-neg"),
    pytest.param(lambda: Timeouts(attempt=float("nan")), "attempt", "not a finite number", id="attempt-nan"),
    pytest.param(
        lambda: Timeouts(connect=40.0),
        "connect",
        "must be <= attempt (30.0), got 40.0",
        id="connect-over-attempt",
    ),
    pytest.param(
        lambda: Timeouts(connect=1e10),
        "connect",
        "must be a number <= 3600, got 10000000000.0",
        id="connect-huge",
    ),
    pytest.param(
        lambda: Timeouts(total=25.0, attempt=10.0),
        "total",
        "must be >= first_token (30.0)",
        id="total-under-first-token",
    ),
    pytest.param(
        lambda: RetryPolicy(rules={Verdict.CALLER_ERROR: RetryRule()}),
        "rules.caller_error",
        "'caller_error' is never retried",
        id="rule-never-retried",
    ),
    pytest.param(
        untyped(RetryPolicy, rules={"rate_limted": RetryRule()}),
        "rules.rate_limted",
        "unknown verdict 'rate_limted'; allowed:",
        id="rule-verdict-typo",
    ),
    pytest.param(
        lambda: RetryRule(base=10.0), "base", "must be <= cap (8.0), got 10.0", id="rule-base-over-cap"
    ),
    pytest.param(
        lambda: RetryRule(attempts=0), "attempts", "must be an integer >= 1, got 0", id="rule-attempts"
    ),
    pytest.param(
        lambda: RetryPolicy(max_open_wait=-1.0), "max_open_wait", "must be a number >= 0", id="open-wait"
    ),
    pytest.param(lambda: CachePolicy(max_entries=0), "max_entries", "integer >= 1", id="cache-entries"),
    pytest.param(
        untyped(CachePolicy, enabled=1), "enabled", "must be true or false, got 1", id="cache-flag-int"
    ),
    pytest.param(
        lambda: ValidationPolicy(context_windows={"gpt-4o": 0}),
        "context_windows.gpt-4o",
        "integer >= 1",
        id="context-window-zero",
    ),
    pytest.param(
        lambda: FallbackPolicy(forced_failures={"gpt-4o": Verdict.SUCCESS}),
        "forced_failures.gpt-4o",
        "'success' is not a failure",
        id="forced-success",
    ),
    # steps and routes
    pytest.param(
        lambda: routed(FallbackStep(kind="target", target="nowhere")),
        "routes.gpt-4o.steps[0].target",
        "unknown target 'nowhere'; defined targets: azure",
        id="step-unknown-target",
    ),
    pytest.param(
        lambda: routed(FallbackStep(kind="model", model="gpt-4o")),
        "routes.gpt-4o.steps[0].model",
        "is the route's own model",
        id="step-own-model",
    ),
    pytest.param(
        lambda: FallbackStep(kind="canned", text="{prompt}"),
        "text",
        "may only use {model} and {reason}",
        id="canned-template",
    ),
    pytest.param(
        lambda: FallbackStep(kind="model"), "model", "required for a 'model' step", id="model-missing"
    ),
    pytest.param(
        lambda: FallbackStep(kind="cache", model="gpt-4o-mini"),
        "model",
        "not used by a 'cache' step; allowed: kind",
        id="cache-step-with-model",
    ),
    pytest.param(
        lambda: step("modle", model="gpt-4o-mini"),
        "kind",
        "must be one of 'model', 'target', 'cache', 'canned', 'function', got 'modle'",
        id="step-kind-typo",
    ),
    pytest.param(
        lambda: routed(context_model="gpt-4o"),
        "routes.gpt-4o.context_model",
        "is the route's own model",
        id="context-model-own",
    ),
    pytest.param(
        lambda: FallbackStep(kind="function"),
        "function",
        "required for a 'function' step",
        id="function-missing",
    ),
    pytest.param(
        untyped(FallbackStep, kind="function", function=_answer),
        "function",
        "must be a non-empty string, got a function (not shown)",
        id="function-step-given-the-function-itself",
    ),
    pytest.param(
        lambda: FallbackStep(kind="model", model="gpt-4o-mini", function="answer"),
        "function",
        "not used by a 'model' step; allowed: kind, model",
        id="model-step-with-function",
    ),
    # targets
    pytest.param(
        lambda: FallbackPolicy(targets={"azure": Target(name="Azure", base_url="https://azure.test/v1")}),
        "targets.azure.name",
        "must equal its table key in fallback.targets, 'azure'",
        id="target-name-not-key",
    ),
    pytest.param(
        untyped(Target, name="azure", client=CLIENT),
        "client",
        "code-only: pass clients=... to resilient() instead",
        id="target-client",
    ),
    pytest.param(
        lambda: Target(name="azure", base_url="ftp://example.com"),
        "base_url",
        "must be an http(s) URL",
        id="target-base-url",
    ),
    pytest.param(
        lambda: Target(name="azure", api_key_env=MISSING_ENV),
        "api_key_env",
        "names an environment variable that is not set",
        id="target-key-variable-unset",
    ),
    pytest.param(
        untyped(Target, name="azure", breaker={"fail_max": 0}),
        "breaker.fail_max",
        "must be an integer >= 1, got 0",
        id="target-breaker-as-data",
    ),
    pytest.param(
        lambda: FallbackPolicy(targets={"": Target(name="x")}),
        'targets.""',
        "keys must be non-empty strings, got ''",
        id="target-empty-key",
    ),
    # code in a policy
    pytest.param(untyped(Policy, clock=FakeClock()), "clock", "code-only: pass clock=", id="clock"),
    pytest.param(
        untyped(Policy, listeners=(_listener,)), "listeners", "code-only: pass listeners=", id="listeners"
    ),
    pytest.param(untyped(Policy, breaker_key=lambda b, m: b), "breaker_key", "code-only", id="breaker-key"),
    # each part has its shape
    pytest.param(untyped(Policy, retry=None), "retry", "must be a table, got None", id="retry-none"),
    pytest.param(
        untyped(FallbackPolicy, routes={"gpt-4o": [FallbackStep(kind="cache")]}),
        "routes.gpt-4o",
        "must be a table, got a list (not shown)",
        id="route-as-list",
    ),
    pytest.param(
        untyped(FallbackPolicy, targets=[Target(name="azure")]),
        "targets",
        "must be a table",
        id="targets-as-list",
    ),
    pytest.param(
        untyped(Route, steps=("cache",)), "steps[0]", "must be a table, got 'cache'", id="step-as-string"
    ),
    pytest.param(
        untyped(RetryPolicy, rules={Verdict.TIMEOUT: 3}),
        "rules.timeout",
        "must be a table, got 3",
        id="rule-as-int",
    ),
]


@pytest.mark.parametrize(("build", "path", "fragment"), ONE_MISTAKE)
def test_one_mistake_one_message_naming_it(build: Callable[[], object], path: str, fragment: str) -> None:
    """Each row breaks one field; building the object names exactly that dotted key, and why."""
    (problem,) = problems_of(build)
    assert problem.startswith(f"{path}: "), problem
    assert fragment in problem, problem


# (a mistake made in code, the same mistake written as file data, the section it sits in)
SAME_AS_FILE: list[Any] = [
    pytest.param(lambda: BreakerPolicy(fail_max=0), {"breaker": {"fail_max": 0}}, "breaker", id="fail-max"),
    pytest.param(lambda: Timeouts(connect=40.0), {"timeouts": {"connect": 40}}, "timeouts", id="connect"),
    pytest.param(lambda: Timeouts(total=10.0), {"timeouts": {"total": 10}}, "timeouts", id="total"),
    pytest.param(
        lambda: RetryPolicy(rules={Verdict.QUOTA_EXHAUSTED: RetryRule()}),
        {"retry": {"rules": {"quota_exhausted": {}}}},
        "retry",
        id="rule-never-retried",
    ),
    pytest.param(
        lambda: routed(FallbackStep(kind="target", target="gcp")).fallback,
        {
            "fallback": {
                "targets": {"azure": {"api_key_env": KEY_ENV}},
                "routes": {"gpt-4o": {"steps": [{"kind": "target", "target": "gcp"}]}},
            }
        },
        "fallback",
        id="unknown-target",
    ),
]


@pytest.mark.parametrize(("build", "data", "section"), SAME_AS_FILE)
def test_code_and_file_mistakes_read_the_same(
    build: Callable[[], object], data: dict[str, Any], section: str
) -> None:
    """A mistake made in code gets the very message the same mistake gets in a file."""
    from_file = problems_of(lambda: Policy.from_dict(data))
    assert from_file == tuple(f"{section}.{problem}" for problem in problems_of(build))


def test_every_mistake_of_a_whole_policy_is_listed_in_one_error() -> None:
    """Sections given as data in code are checked together, and every mistake comes back at once."""
    build = untyped(
        Policy,
        timeouts={"total": -1.0},
        breaker={"fail_max": 0, "mode": "always"},
        fallback={"routes": {"*": {"steps": [{"kind": "function"}]}}},
    )
    assert [problem.split(": ")[0] for problem in problems_of(build)] == [
        "timeouts.total",
        "breaker.mode",
        "breaker.fail_max",
        'fallback.routes."*".steps[0].function',
    ]


def test_an_invalid_policy_object_cannot_exist() -> None:
    """A code-built invalid model raises ConfigError (a ValueError), never pydantic's own error."""
    with pytest.raises(ConfigError) as info:
        BreakerPolicy(fail_max=0)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, pydantic.ValidationError)
    assert info.value.__context__ is None


def test_a_policy_is_frozen() -> None:
    """Fields cannot be reassigned after construction (the checks would be bypassed)."""
    policy = BreakerPolicy()
    with pytest.raises(pydantic.ValidationError):
        policy.fail_max = 0


def test_verdicts_given_by_name_are_accepted() -> None:
    """Verdict is a StrEnum: rules keyed by its plain string name are the same keys."""
    policy = RetryPolicy(rules={"rate_limited": RetryRule(attempts=2)})  # type: ignore[dict-item]
    assert policy.rules == {Verdict.RATE_LIMITED: RetryRule(attempts=2)}


def test_a_key_pasted_where_a_name_belongs_is_never_echoed() -> None:
    """A 32-hex key in api_key_env (a valid variable name, not set) is reported without printing it."""
    pasted = "a3f9c2e4b7d1806f5e2c9a4b3d7f1e08"
    with pytest.raises(ConfigError) as info:
        Target(name="azure", base_url="https://azure.test/v1", api_key_env=pasted)
    (problem,) = info.value.problems
    assert problem.startswith("api_key_env: names an environment variable that is not set")
    assert pasted not in str(info.value)
    assert pasted not in repr(info.value)


# -- through resilient() --------------------------------------------------------------------------


def _raw(upstream: FakeUpstream, flavour: str = "sync") -> Any:
    """A plain SDK client on the fake upstream."""
    if flavour == "async":
        return openai.AsyncOpenAI(
            api_key="sk-test",
            base_url="http://fake.test/v1",
            http_client=httpx2.AsyncClient(transport=upstream.async_transport()),
        )
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake.test/v1",
        http_client=httpx2.Client(transport=upstream.transport()),
    )


def _with_target(target: Target) -> Policy:
    """A policy whose one target is ``target``, which the ``gpt-4o`` route falls back to."""
    steps = (FallbackStep(kind="target", target=target.name),)
    return Policy(
        fallback=FallbackPolicy(routes={"gpt-4o": Route(steps=steps)}, targets={target.name: target})
    )


def resilient_problems(policy: Any, **runtime: Any) -> tuple[str, ...]:
    """The problems resilient() lists for ``policy`` and its keyword arguments (no request is sent)."""
    upstream = FakeUpstream()
    with pytest.raises(ConfigError) as info:
        resilient(_raw(upstream), policy, **runtime)
    assert upstream.count() == 0
    return info.value.problems


# (the policy, resilient()'s keyword arguments, the one problem's start)
RUNTIME_MISTAKE: list[Any] = [
    pytest.param(
        3, {}, "policy: must be a Policy, a dict of settings or a path to a file, got 3", id="policy-int"
    ),
    pytest.param(
        lambda: _with_target(Target(name="local")),
        {},
        "fallback.targets.local: needs a base_url, or a ready client passed as resilient(..., clients=",
        id="target-without-client-or-url",
    ),
    pytest.param(
        lambda: _with_target(Target(name="local")),
        {"clients": {"local": CLIENT, "lcoal": CLIENT}},
        "clients['lcoal']: names no target in fallback.targets; defined targets: local",
        id="client-for-no-target",
    ),
    pytest.param(
        lambda: _with_target(Target(name="local")),
        {"clients": {"local": ASYNC_CLIENT}},
        "clients['local']: must be an openai.OpenAI like the wrapped client, got a AsyncOpenAI",
        id="client-of-the-other-flavour",
    ),
    pytest.param(
        lambda: _with_target(Target(name="local", base_url="http://local.test/v1")),
        {"clients": {"local": CLIENT}},
        "clients['local']: ambiguous: fallback.targets.local also sets base_url",
        id="client-and-base-url",
    ),
    pytest.param(
        lambda: routed(
            FallbackStep(kind="model", model="gpt-4o-mini"), FallbackStep(kind="function", function="answer")
        ),
        {"functions": {"anwser": _answer}},
        "fallback.routes.gpt-4o.steps[1].function: no function 'answer' was passed as resilient(",
        id="function-not-given",
    ),
    pytest.param(
        lambda: Policy(),
        {"functions": {"answer": "a reply"}},
        "functions['answer']: must be callable as function(request_body, reason)",
        id="function-not-callable",
    ),
    pytest.param(lambda: Policy(), {"clock": object()}, "clock: must be a Clock", id="clock"),
    pytest.param(
        lambda: Policy(), {"listeners": (_listener, "log")}, "listeners[1]: must be callable", id="listener"
    ),
    pytest.param(
        lambda: Policy(),
        {"listeners": _listener},
        "listeners: must be an iterable of callables",
        id="one-listener",
    ),
    pytest.param(
        lambda: Policy(),
        {"breaker_key": "per-model"},
        "breaker_key: must be None or callable as breaker_key(base_url, model)",
        id="breaker-key",
    ),
    pytest.param(
        lambda: Policy(),
        {"http_client": 5},
        "http_client: must be None or callable as http_client(target)",
        id="http",
    ),
]


@pytest.mark.parametrize(("policy", "runtime", "start"), RUNTIME_MISTAKE)
def test_resilient_refuses_each_bad_collaborator(policy: Any, runtime: dict[str, Any], start: str) -> None:
    """resilient() checks its keyword arguments against the policy once, one line per mistake."""
    (problem,) = resilient_problems(policy() if callable(policy) else policy, **runtime)
    assert problem.startswith(start), problem


def test_resilient_never_echoes_a_client_slot_holding_a_key() -> None:
    """A secret passed where a client belongs is described by its type only."""
    (problem,) = resilient_problems(_with_target(Target(name="local")), clients={"local": SECRET})
    assert problem == "clients['local']: must be an openai.OpenAI like the wrapped client, got a str"


def test_resilient_reports_a_bad_dict_policy_once() -> None:
    """A dict is checked by its loader, and its mistake is listed once."""
    (problem,) = resilient_problems({"breaker": {"fail_max": 0}})
    assert problem == "breaker.fail_max: must be an integer >= 1, got 0"


def test_resilient_runs_a_valid_code_policy_with_its_collaborators() -> None:
    """Clock, listeners, a ready client, a function by name and a breaker_key: the chain answers."""
    upstream = FakeUpstream()
    events: list[object] = []
    policy = Policy(
        retry=RetryPolicy(rules={}),
        fallback=FallbackPolicy(
            targets={"local": Target(name="local", model="llama3", accepts_prefill=True)},
            routes={
                "gpt-4o": Route(
                    steps=(
                        FallbackStep(kind="target", target="local"),
                        FallbackStep(kind="function", function="answer"),
                    ),
                    content_policy=FallbackStep(kind="function", function="answer"),
                )
            },
        ),
    )
    client = resilient(
        _raw(upstream),
        policy,
        clock=FakeClock(),
        listeners=(events.append,),
        clients={"local": CLIENT},
        functions={"answer": _answer},
        breaker_key=lambda base_url, model: f"{base_url}|{model}",
    )
    assert isinstance(client, openai.OpenAI)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert upstream.count() == 1
    assert events


def test_model_validate_reports_like_the_constructor() -> None:
    """pydantic's own entry point raises the same ConfigError lines, with full paths."""
    problems = problems_of(lambda: Policy.model_validate({"breaker": {"fail_max": 0}}))
    assert problems == ("breaker.fail_max: must be an integer >= 1, got 0",)
