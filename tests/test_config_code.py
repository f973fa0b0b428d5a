"""Policies built in code: checked by the file's rules, with the file's messages, before any request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_openai import resilient
from resilient_openai._classify import Verdict
from resilient_openai._config import check_policy, describe_policy, policy_from_dict
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

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resilience.toml"
KEY_ENV = "RO_TEST_TARGET_KEY"
MISSING_ENV = "RO_TEST_NEVER_SET"
SECRET = "sk-proj-THIS-MUST-NEVER-BE-PRINTED"
CLIENT = openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1")


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


def problems_of(policy: Any) -> tuple[str, ...]:
    """The problems check_policy lists for ``policy``."""
    with pytest.raises(ConfigError) as info:
        check_policy(policy)
    return info.value.problems


def routed(*steps: FallbackStep, **route: Any) -> Policy:
    """A policy with target ``azure`` (built from a key variable) and one route for ``gpt-4o``."""
    targets = {"azure": Target("azure", api_key_env=KEY_ENV)}
    routes = {"gpt-4o": Route(steps=steps, **route)}
    return Policy(fallback=FallbackPolicy(routes=routes, targets=targets))


def targeted(target: Any, key: str = "azure") -> Policy:
    """A policy whose only target is ``target``, under ``key``."""
    return Policy(fallback=FallbackPolicy(targets={key: target}))


def step(kind: Any, **fields: Any) -> FallbackStep:
    """A FallbackStep without the type checker's help (code that was never type-checked)."""
    return FallbackStep(kind, **fields)


# (policy, the key path the one problem must name, a fragment of what it must say)
ONE_MISTAKE: list[Any] = [
    # the file's rules, applied to code
    pytest.param(
        Policy(breaker=BreakerPolicy(fail_max=0)),
        "breaker.fail_max",
        "must be an integer >= 1, got 0",
        id="fail-max-zero",
    ),
    pytest.param(
        # Equal to the default (5 == 5.0) but not an integer: still refused, as in a file.
        Policy(breaker=BreakerPolicy(fail_max=5.0)),  # type: ignore[arg-type]
        "breaker.fail_max",
        "must be an integer >= 1, got 5.0",
        id="fail-max-float",
    ),
    pytest.param(
        Policy(breaker=BreakerPolicy(mode="ratios")),  # type: ignore[arg-type]
        "breaker.mode",
        "must be one of 'consecutive', 'ratio', got 'ratios'",
        id="breaker-mode",
    ),
    pytest.param(
        Policy(breaker=BreakerPolicy(failure_verdicts=frozenset({Verdict.SUCCESS}))),
        "breaker.failure_verdicts[0]",
        "'success' says nothing about the target's health",
        id="failure-verdict-success",
    ),
    pytest.param(
        Policy(breaker=BreakerPolicy(break_duration=600.0)),
        "breaker.break_duration",
        "must be <= break_max (300.0)",
        id="break-duration-over-max",
    ),
    pytest.param(
        Policy(timeouts=Timeouts(total=-1.0)),
        "timeouts.total",
        "must be a number > 0, got -1.0",
        id="total-neg",
    ),
    pytest.param(
        Policy(timeouts=Timeouts(attempt=float("nan"))),
        "timeouts.attempt",
        "not a finite number",
        id="attempt-nan",
    ),
    pytest.param(
        Policy(timeouts=Timeouts(connect=40.0)),
        "timeouts.connect",
        "must be <= attempt (30.0), got 40.0",
        id="connect-over-attempt",
    ),
    pytest.param(
        Policy(timeouts=Timeouts(total=25.0, attempt=10.0)),
        "timeouts.total",
        "must be >= first_token (30.0)",
        id="total-under-first-token",
    ),
    pytest.param(
        Policy(retry=RetryPolicy(rules={Verdict.CALLER_ERROR: RetryRule()})),
        "retry.rules.caller_error",
        "'caller_error' is never retried",
        id="rule-never-retried",
    ),
    pytest.param(
        Policy(retry=RetryPolicy(rules={"rate_limted": RetryRule()})),  # type: ignore[dict-item]
        "retry.rules.rate_limted",
        "unknown verdict; allowed:",
        id="rule-verdict-typo",
    ),
    pytest.param(
        Policy(retry=RetryPolicy(rules={Verdict.RATE_LIMITED: RetryRule(base=10.0)})),
        "retry.rules.rate_limited.base",
        "must be <= cap (8.0), got 10.0",
        id="rule-base-over-cap",
    ),
    pytest.param(
        Policy(retry=RetryPolicy(rules={Verdict.TIMEOUT: RetryRule(attempts=0)})),
        "retry.rules.timeout.attempts",
        "must be an integer >= 1, got 0",
        id="rule-attempts-zero",
    ),
    pytest.param(
        Policy(retry=RetryPolicy(max_open_wait=-1.0)),
        "retry.max_open_wait",
        "must be a number >= 0",
        id="max-open-wait",
    ),
    pytest.param(
        Policy(cache=CachePolicy(max_entries=0)), "cache.max_entries", "integer >= 1", id="cache-entries"
    ),
    pytest.param(
        Policy(cache=CachePolicy(enabled=1)),  # type: ignore[arg-type]
        "cache.enabled",
        "must be true or false, got 1",
        id="cache-flag-int",
    ),
    pytest.param(
        Policy(validation=ValidationPolicy(context_windows={"gpt-4o": 0})),
        "validation.context_windows.gpt-4o",
        "integer >= 1",
        id="context-window-zero",
    ),
    pytest.param(
        Policy(fallback=FallbackPolicy(forced_failures={"gpt-4o": Verdict.SUCCESS})),
        "fallback.forced_failures.gpt-4o",
        "'success' is not a failure",
        id="forced-success",
    ),
    # steps and routes
    pytest.param(
        routed(FallbackStep("target", target="nowhere")),
        "fallback.routes.gpt-4o.steps[0].target",
        "unknown target 'nowhere'; defined targets: azure",
        id="step-unknown-target",
    ),
    pytest.param(
        routed(FallbackStep("model", model="gpt-4o")),
        "fallback.routes.gpt-4o.steps[0].model",
        "is the route's own model",
        id="step-own-model",
    ),
    pytest.param(
        routed(FallbackStep("canned", text="down"), FallbackStep("cache")),
        "fallback.routes.gpt-4o.steps[1]",
        "unreachable: fallback.routes.gpt-4o.steps[0] is a canned reply",
        id="step-after-canned",
    ),
    pytest.param(
        routed(FallbackStep("canned", text="{prompt}")),
        "fallback.routes.gpt-4o.steps[0].text",
        "may only use {model} and {reason}",
        id="canned-template",
    ),
    pytest.param(
        routed(FallbackStep("model")),
        "fallback.routes.gpt-4o.steps[0].model",
        "required for a 'model' step",
        id="model-step-without-model",
    ),
    pytest.param(
        routed(FallbackStep("cache", model="gpt-4o-mini")),
        "fallback.routes.gpt-4o.steps[0].model",
        "not used by a 'cache' step; allowed: kind",
        id="cache-step-with-model",
    ),
    pytest.param(
        routed(step("modle", model="gpt-4o-mini")),
        "fallback.routes.gpt-4o.steps[0].kind",
        "must be one of 'model', 'target', 'cache', 'canned', 'function', got 'modle'",
        id="step-kind-typo",
    ),
    pytest.param(
        routed(context_model="gpt-4o"),
        "fallback.routes.gpt-4o.context_model",
        "is the route's own model",
        id="context-model-own",
    ),
    # only in code: function steps
    pytest.param(
        routed(FallbackStep("function")),
        "fallback.routes.gpt-4o.steps[0].function",
        "required for a 'function' step",
        id="function-step-without-function",
    ),
    pytest.param(
        routed(step("function", function="answer")),
        "fallback.routes.gpt-4o.steps[0].function",
        "must be callable as function(request_body, reason), got 'answer'",
        id="function-not-callable",
    ),
    pytest.param(
        routed(FallbackStep("model", model="gpt-4o-mini", function=_answer)),
        "fallback.routes.gpt-4o.steps[0].function",
        "not used by a 'model' step; allowed: kind, model",
        id="model-step-with-function",
    ),
    pytest.param(
        routed(content_policy=FallbackStep("function")),
        "fallback.routes.gpt-4o.content_policy.function",
        "required for a 'function' step",
        id="content-policy-function",
    ),
    # targets
    pytest.param(
        targeted(Target("Azure", api_key_env=KEY_ENV)),
        "fallback.targets.azure.name",
        "must equal its key in fallback.targets, 'azure', got 'Azure'",
        id="target-name-not-key",
    ),
    pytest.param(
        targeted(Target("azure", client=CLIENT, base_url="https://example.com/v1")),
        "fallback.targets.azure.client",
        "ambiguous: given together with base_url",
        id="client-and-base-url",
    ),
    pytest.param(
        # The dead variable is reported as ambiguous, not as unset.
        targeted(Target("azure", client=CLIENT, api_key_env=MISSING_ENV)),
        "fallback.targets.azure.client",
        "ambiguous: given together with api_key_env",
        id="client-and-key-variable",
    ),
    pytest.param(
        targeted(Target("azure", client="https://example.com/v1")),  # type: ignore[arg-type]
        "fallback.targets.azure.client",
        "must be an openai.OpenAI or openai.AsyncOpenAI, got a str",
        id="client-not-a-client",
    ),
    pytest.param(
        targeted(Target("azure", base_url="ftp://example.com")),
        "fallback.targets.azure.base_url",
        "must be an http(s) URL",
        id="target-base-url",
    ),
    pytest.param(
        targeted(Target("azure", api_key_env=MISSING_ENV)),
        "fallback.targets.azure.api_key_env",
        f"environment variable {MISSING_ENV} is not set",
        id="target-key-variable-unset",
    ),
    pytest.param(
        targeted(Target("azure", api_key_env=KEY_ENV, breaker=BreakerPolicy(fail_max=0))),
        "fallback.targets.azure.breaker.fail_max",
        "must be an integer >= 1, got 0",
        id="target-breaker",
    ),
    pytest.param(
        targeted(
            Target(
                "azure",
                api_key_env=KEY_ENV,
                retry=RetryPolicy(rules={Verdict.SERVER_ERROR: RetryRule(base=9.0)}),
            )
        ),
        "fallback.targets.azure.retry.rules.server_error.base",
        "must be <= cap (8.0), got 9.0",
        id="target-rule-base-over-cap",
    ),
    pytest.param(
        targeted(Target("", client=CLIENT), key=""),
        "fallback.targets",
        "keys must be non-empty strings, got ''",
        id="target-empty-key",
    ),
    # only in code: the top-level objects
    pytest.param(Policy(clock=object()), "clock", "must be a Clock", id="clock"),  # type: ignore[arg-type]
    pytest.param(
        Policy(listeners=(_listener, "log")),  # type: ignore[arg-type]
        "listeners[1]",
        "must be callable, got 'log'",
        id="listener-not-callable",
    ),
    pytest.param(
        Policy(listeners=_listener),  # type: ignore[arg-type]
        "listeners",
        "must be an iterable of callables",
        id="listeners-one-function",
    ),
    pytest.param(
        Policy(breaker_key="per-model"),  # type: ignore[arg-type]
        "breaker_key",
        "must be None or callable as breaker_key(base_url, model)",
        id="breaker-key",
    ),
    # only in code: each part has its class
    pytest.param(Policy(retry=None), "retry", "must be a RetryPolicy, got None", id="retry-none"),  # type: ignore[arg-type]
    pytest.param(
        Policy(fallback=FallbackPolicy(routes={"gpt-4o": [FallbackStep("cache")]})),  # type: ignore[dict-item]
        "fallback.routes.gpt-4o",
        "must be a Route, got [FallbackStep(",
        id="route-as-list",
    ),
    pytest.param(
        Policy(fallback=FallbackPolicy(targets=[Target("azure", client=CLIENT)])),  # type: ignore[arg-type]
        "fallback.targets",
        "must be a mapping of name to Target",
        id="targets-as-list",
    ),
    pytest.param(
        Policy(fallback=FallbackPolicy(routes={"*": Route(steps=("cache",))})),  # type: ignore[arg-type]
        'fallback.routes."*".steps[0]',
        "must be a FallbackStep, got 'cache'",
        id="step-as-string",
    ),
    pytest.param(
        Policy(retry=RetryPolicy(rules={Verdict.TIMEOUT: 3})),  # type: ignore[dict-item]
        "retry.rules.timeout",
        "must be a RetryRule, got 3",
        id="rule-as-int",
    ),
]


@pytest.mark.parametrize(("policy", "path", "fragment"), ONE_MISTAKE)
def test_one_mistake_one_message_naming_it(policy: Policy, path: str, fragment: str) -> None:
    """Each row breaks one field; check_policy names exactly that dotted key, and why."""
    (problem,) = problems_of(policy)
    assert problem.startswith(f"{path}: "), problem
    assert fragment in problem, problem


# (a policy built in code, the same mistake written as file data)
SAME_AS_FILE: list[Any] = [
    pytest.param(Policy(breaker=BreakerPolicy(fail_max=0)), {"breaker": {"fail_max": 0}}, id="fail-max"),
    pytest.param(Policy(timeouts=Timeouts(connect=40.0)), {"timeouts": {"connect": 40}}, id="connect"),
    pytest.param(
        Policy(timeouts=Timeouts(total=10.0)), {"timeouts": {"total": 10}}, id="total-under-three-limits"
    ),
    pytest.param(
        Policy(retry=RetryPolicy(rules={Verdict.QUOTA_EXHAUSTED: RetryRule()})),
        {"retry": {"rules": {"quota_exhausted": {}}}},
        id="rule-never-retried",
    ),
    pytest.param(
        routed(FallbackStep("target", target="gcp")),
        {
            "fallback": {
                "targets": {"azure": {"api_key_env": KEY_ENV}},
                "routes": {"gpt-4o": {"steps": [{"kind": "target", "target": "gcp"}]}},
            }
        },
        id="unknown-target",
    ),
    pytest.param(
        targeted(Target("azure", api_key_env=MISSING_ENV)),
        {"fallback": {"targets": {"azure": {"api_key_env": MISSING_ENV}}}},
        id="key-variable-unset",
    ),
]


@pytest.mark.parametrize(("policy", "data"), SAME_AS_FILE)
def test_code_and_file_mistakes_read_the_same(policy: Policy, data: dict[str, Any]) -> None:
    """A mistake made in code gets the very message the same mistake gets in a file."""
    with pytest.raises(ConfigError) as from_file:
        policy_from_dict(data)
    assert problems_of(policy) == from_file.value.problems


def test_every_mistake_is_listed_in_one_error() -> None:
    """Several mistakes, in sections and code-only fields, come back together, in file order."""
    policy = Policy(
        timeouts=Timeouts(total=-1.0, connect=40.0),
        breaker=BreakerPolicy(fail_max=0),
        fallback=FallbackPolicy(routes={"*": Route(steps=(FallbackStep("function"),))}),
        listeners=("log",),  # type: ignore[arg-type]
    )
    assert [problem.split(": ")[0] for problem in problems_of(policy)] == [
        "timeouts.total",
        "timeouts.connect",
        "breaker.fail_max",
        'fallback.routes."*".steps[0].function',
        "listeners[0]",
    ]


def test_valid_code_policy_with_code_only_objects_passes() -> None:
    """A function step, a target with a client, listeners, a clock and a breaker_key are all fine."""
    policy = Policy(
        timeouts=Timeouts(total=20.0, attempt=10.0, first_token=10.0, stream_idle=5.0),
        retry=RetryPolicy(rules={Verdict.RATE_LIMITED: RetryRule(attempts=5, base=1.0, cap=20.0)}),
        breaker=BreakerPolicy(mode="ratio", failure_verdicts=frozenset({Verdict.SERVER_ERROR})),
        fallback=FallbackPolicy(
            targets={
                "local": Target("local", client=CLIENT, model="llama3", accepts_prefill=True),
                "azure": Target("azure", api_key_env=KEY_ENV, breaker=BreakerPolicy(fail_max=2)),
            },
            routes={
                "gpt-4o": Route(
                    steps=(
                        FallbackStep("target", target="local"),
                        FallbackStep("function", function=_answer),
                        FallbackStep("canned", text="{model} is down: {reason}"),
                    ),
                    content_policy=FallbackStep("function", function=_answer),
                ),
                "*": Route(steps=(FallbackStep("target", target="azure"),)),
            },
        ),
        clock=FakeClock(),
        listeners=(_listener, print),
        breaker_key=lambda base_url, model: f"{base_url}|{model}",
    )
    check_policy(policy)


def test_default_policy_passes() -> None:
    """Policy() is valid."""
    check_policy(Policy())


def test_policies_loaded_from_files_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the file loader accepts, check_policy accepts too, before and after describing it."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "test-key")
    policy = Policy.from_file(EXAMPLE)
    check_policy(policy)
    check_policy(policy_from_dict(json.loads(json.dumps(describe_policy(policy)))))


_SECONDS = st.one_of(st.floats(min_value=-1.0, max_value=100.0), st.sampled_from([0.0, 30.0, 60.0]))


@settings(max_examples=80, deadline=None)
@given(
    limits=st.tuples(*[_SECONDS] * 5),
    rule=st.tuples(st.integers(-1, 5), _SECONDS, _SECONDS, st.floats(min_value=-0.5, max_value=1.5)),
    breaker=st.tuples(st.integers(-1, 5), _SECONDS, _SECONDS),
)
def test_code_and_file_accept_the_same_policies(
    limits: tuple[float, ...], rule: tuple[int, float, float, float], breaker: tuple[int, float, float]
) -> None:
    """A code policy passes check_policy exactly when the file holding it passes policy_from_dict."""
    attempts, base, cap, jitter = rule
    fail_max, break_duration, break_max = breaker
    policy = Policy(
        timeouts=Timeouts(*limits),
        retry=RetryPolicy(rules={Verdict.TIMEOUT: RetryRule(attempts, base, cap, jitter)}),
        breaker=BreakerPolicy(fail_max=fail_max, break_duration=break_duration, break_max=break_max),
    )
    data = json.loads(json.dumps(describe_policy(policy)))
    try:
        policy_from_dict(data)
    except ConfigError:
        file_ok = False
    else:
        file_ok = True
    try:
        check_policy(policy)
    except ConfigError:
        code_ok = False
    else:
        code_ok = True
    assert code_ok == file_ok


def test_verdicts_given_by_name_are_accepted() -> None:
    """Verdict is a StrEnum: rules keyed by its plain string name are the same keys."""
    check_policy(Policy(retry=RetryPolicy(rules={"rate_limited": RetryRule(attempts=2)})))  # type: ignore[dict-item]


def test_a_non_policy_is_refused() -> None:
    """check_policy takes a Policy; a dict is a file's data, for policy_from_dict."""
    (problem,) = problems_of({"breaker": {}})
    assert problem.startswith("(top level): must be a Policy")


def test_a_client_slot_holding_a_key_is_never_echoed() -> None:
    """A secret passed where a client belongs is described by its type only."""
    (problem,) = problems_of(targeted(Target("azure", client=SECRET)))  # type: ignore[arg-type]
    assert SECRET not in problem


def test_check_policy_does_not_change_the_policy() -> None:
    """Checking describes the policy; the policy and its describe_policy output stay as they were."""
    policy = Policy(
        fallback=FallbackPolicy(routes={"*": Route(steps=(FallbackStep("function", function=_answer),))})
    )
    before = describe_policy(policy)
    check_policy(policy)
    assert describe_policy(policy) == before
    assert before["fallback"]["routes"]["*"]["steps"] == [{"kind": "function", "function": "<code>"}]


# -- through resilient() --------------------------------------------------------------------------


def _raw(upstream: FakeUpstream, flavour: str) -> openai.OpenAI | openai.AsyncOpenAI:
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


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_resilient_refuses_a_bad_code_policy_before_any_request(flavour: str) -> None:
    """resilient(client, Policy(breaker=BreakerPolicy(fail_max=0))) raises ConfigError; nothing is sent."""
    upstream = FakeUpstream()
    with pytest.raises(ConfigError) as info:
        resilient(_raw(upstream, flavour), Policy(breaker=BreakerPolicy(fail_max=0)))
    (problem,) = info.value.problems
    assert problem.startswith("breaker.fail_max: must be an integer >= 1, got 0")
    assert upstream.count() == 0


def test_resilient_reports_a_bad_dict_policy_once() -> None:
    """A dict is checked by its loader, and its mistake is listed once."""
    upstream = FakeUpstream()
    with pytest.raises(ConfigError) as info:
        resilient(_raw(upstream, "sync"), {"breaker": {"fail_max": 0}})
    (problem,) = info.value.problems
    assert problem.startswith("breaker.fail_max:")
    assert upstream.count() == 0


def test_resilient_runs_a_valid_code_policy() -> None:
    """A valid code policy with a function step builds the chain and answers."""
    upstream = FakeUpstream()
    clock = FakeClock()
    policy = Policy(
        clock=clock,
        fallback=FallbackPolicy(routes={"*": Route(steps=(FallbackStep("function", function=_answer),))}),
    )
    client = resilient(_raw(upstream, "sync"), policy)
    assert isinstance(client, openai.OpenAI)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert upstream.count() == 1
