"""Policy files: every mistake named once, secrets never echoed, and the dumped policy round-trips."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_openai._classify import Verdict
from resilient_openai._config import load_file
from resilient_openai._errors import ConfigError
from resilient_openai._fields import RETRYABLE_VERDICTS
from resilient_openai._policy import (
    BreakerPolicy,
    CachePolicy,
    FallbackStep,
    Policy,
    RetryBudget,
    RetryPolicy,
    RetryRule,
    Route,
    Target,
    Timeouts,
    ValidationPolicy,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resilience.toml"
KEY_ENV = "RO_TEST_TARGET_KEY"
MISSING_ENV = "RO_TEST_NEVER_SET"
SECRET = "sk-proj-THIS-MUST-NEVER-BE-PRINTED"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees one target key variable set and one known to be absent."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.delenv(MISSING_ENV, raising=False)


def problems_of(data: Any) -> tuple[str, ...]:
    """The problems ConfigError lists for ``data``."""
    with pytest.raises(ConfigError) as info:
        Policy.from_dict(data)
    return info.value.problems


def with_target(**fields: Any) -> dict[str, Any]:
    """A policy with one valid target named ``azure``, plus ``fields`` in that target."""
    return {"fallback": {"targets": {"azure": {"api_key_env": KEY_ENV, **fields}}}}


def with_steps(*steps: Any, route: str = "gpt-4o") -> dict[str, Any]:
    """A policy with target ``azure`` and one route whose steps are ``steps``."""
    data = with_target()
    data["fallback"]["routes"] = {route: {"steps": list(steps)}}
    return data


# (data, the key path the one problem must name, a fragment of what it must say)
ONE_MISTAKE: list[Any] = [
    # top level
    pytest.param({"bogus": {}}, "bogus", "unknown key; allowed: breaker, cache", id="top-unknown"),
    pytest.param({"retyr": {}}, "retyr", "did you mean 'retry'", id="top-typo-hint"),
    pytest.param({"clock": "system"}, "clock", "code-only", id="top-clock-in-file"),
    pytest.param({"listeners": ["x"]}, "listeners", "code-only", id="top-listeners-in-file"),
    pytest.param({"retry": 3}, "retry", "must be a table, got 3", id="section-not-table"),
    pytest.param({"timeouts": None}, "timeouts", "must be a table, got None", id="section-null"),
    # retry
    pytest.param(
        {"retry": {"rules": {"server_errr": {}}}},
        "retry.rules.server_errr",
        "unknown verdict 'server_errr'; allowed: conflict, connection_error, malformed_response,",
        id="rule-unknown-verdict",
    ),
    pytest.param(
        {"retry": {"rules": {"caller_error": {"attempts": 2}}}},
        "retry.rules.caller_error",
        "is never retried",
        id="rule-caller-error",
    ),
    pytest.param(
        {"retry": {"rules": {"quota_exhausted": {}}}},
        "retry.rules.quota_exhausted",
        "is never retried",
        id="rule-quota",
    ),
    pytest.param({"retry": {"rules": []}}, "retry.rules", "must be a table", id="rules-not-table"),
    pytest.param(
        {"retry": {"rules": {"timeout": 5}}}, "retry.rules.timeout", "must be a table", id="rule-not-table"
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"attempts": 0}}}},
        "retry.rules.timeout.attempts",
        "must be an integer >= 1, got 0",
        id="attempts-zero",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"attempts": 3.0}}}},
        "retry.rules.timeout.attempts",
        "must be an integer >= 1, got 3.0",
        id="attempts-float",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"attempts": True}}}},
        "retry.rules.timeout.attempts",
        "got True",
        id="attempts-bool",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"base": -1}}}},
        "retry.rules.timeout.base",
        "must be a number >= 0, got -1",
        id="base-negative",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"base": 10}}}},
        "retry.rules.timeout.base",
        "must be <= cap (8.0), got 10.0",
        id="base-above-default-cap",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"base": 2, "cap": 1}}}},
        "retry.rules.timeout.cap",
        "must be >= base (2.0), got 1.0",
        id="cap-below-base",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"jitter": 1.5}}}},
        "retry.rules.timeout.jitter",
        "must be a number in [0, 1], got 1.5",
        id="jitter-above-one",
    ),
    pytest.param(
        {"retry": {"rules": {"timeout": {"tries": 2}}}},
        "retry.rules.timeout.tries",
        "unknown key; allowed: attempts, base, cap, jitter",
        id="rule-unknown-key",
    ),
    pytest.param(
        {"retry": {"max_retry_after": -1}},
        "retry.max_retry_after",
        "must be a number >= 0",
        id="max-retry-after",
    ),
    pytest.param(
        {"retry": {"honor_should_retry": 1}},
        "retry.honor_should_retry",
        "must be true or false, got 1",
        id="bool-not-int",
    ),
    # timeouts
    pytest.param(
        {"timeouts": {"attempt": "30s"}},
        "timeouts.attempt",
        "must be a number > 0, got '30s'",
        id="timeout-str",
    ),
    pytest.param(
        {"timeouts": {"connect": 0}}, "timeouts.connect", "must be a number > 0, got 0", id="timeout-0"
    ),
    pytest.param(
        {"timeouts": {"stream_idle": float("nan")}},
        "timeouts.stream_idle",
        "not a finite number",
        id="timeout-nan",
    ),
    pytest.param(
        {"timeouts": {"total": float("inf")}}, "timeouts.total", "not a finite number", id="timeout-inf"
    ),
    pytest.param(
        {"timeouts": {"total": None}}, "timeouts.total", "must be a number > 0, got None", id="timeout-null"
    ),
    pytest.param(
        {"timeouts": {"total": 10}},
        "timeouts.total",
        ">= attempt (30.0) and >= first_token (30.0) and >= stream_idle (20.0), got 10.0",
        id="total-below-inner-limits",
    ),
    pytest.param(
        {"timeouts": {"connect": 40}},
        "timeouts.connect",
        "must be <= attempt (30.0)",
        id="connect-above-attempt",
    ),
    pytest.param(
        {"timeouts": {"stream_idle": 61}},
        "timeouts.stream_idle",
        "must be <= total (60.0)",
        id="idle-above-total",
    ),
    pytest.param(
        {"timeouts": {"attempt": 5, "connect": 6}},
        "timeouts.attempt",
        "must be >= connect (6.0), got 5.0",
        id="both-set-blames-outer",
    ),
    # breaker
    pytest.param(
        {"breaker": {"fail_max": 0}}, "breaker.fail_max", "must be an integer >= 1, got 0", id="fail-max"
    ),
    pytest.param(
        {"breaker": {"mode": "ratoi"}},
        "breaker.mode",
        "must be one of 'consecutive', 'ratio', got 'ratoi'",
        id="mode",
    ),
    pytest.param(
        {"breaker": {"surprise": 1}}, "breaker.surprise", "unknown key; allowed: ", id="breaker-unknown"
    ),
    pytest.param({"breaker": {"enabled": "yes"}}, "breaker.enabled", "true or false", id="enabled-str"),
    pytest.param(
        {"breaker": {"failure_ratio": 0}}, "breaker.failure_ratio", "in (0, 1], got 0", id="ratio-0"
    ),
    pytest.param(
        {"breaker": {"failure_ratio": 1.01}}, "breaker.failure_ratio", "in (0, 1]", id="ratio-above-1"
    ),
    pytest.param(
        {"breaker": {"slow_call_ratio": -0.1}}, "breaker.slow_call_ratio", "in (0, 1]", id="slow-ratio"
    ),
    pytest.param({"breaker": {"window": 0}}, "breaker.window", "must be a number > 0", id="window"),
    pytest.param({"breaker": {"min_calls": 0}}, "breaker.min_calls", "integer >= 1", id="min-calls"),
    pytest.param(
        {"breaker": {"slow_call_threshold": -2}},
        "breaker.slow_call_threshold",
        "number > 0",
        id="slow-threshold",
    ),
    pytest.param(
        {"breaker": {"break_duration": 0}}, "breaker.break_duration", "number > 0", id="break-duration"
    ),
    pytest.param(
        {"breaker": {"break_multiplier": 0.5}},
        "breaker.break_multiplier",
        "number >= 1",
        id="break-multiplier",
    ),
    pytest.param(
        {"breaker": {"break_max": 4}},
        "breaker.break_max",
        "must be >= break_duration (5.0), got 4.0",
        id="break-max-below-duration",
    ),
    pytest.param(
        {"breaker": {"half_open_probes": 0}}, "breaker.half_open_probes", "integer >= 1", id="probes"
    ),
    pytest.param({"breaker": {"close_after": 0}}, "breaker.close_after", "integer >= 1", id="close-after"),
    pytest.param({"breaker": {"probe_lease": 0}}, "breaker.probe_lease", "number > 0", id="probe-lease"),
    pytest.param({"breaker": {"quota_break": -1}}, "breaker.quota_break", "number >= 0", id="quota-break"),
    pytest.param({"breaker": {"max_breakers": 0}}, "breaker.max_breakers", "integer >= 1", id="max-breakers"),
    pytest.param(
        {"breaker": {"failure_verdicts": "server_error"}},
        "breaker.failure_verdicts",
        "must be a list, got 'server_error'",
        id="verdicts-str",
    ),
    pytest.param(
        {"breaker": {"failure_verdicts": []}},
        "breaker.failure_verdicts",
        "enabled = false",
        id="verdicts-empty",
    ),
    pytest.param(
        {"breaker": {"failure_verdicts": ["server_error", "nope"]}},
        "breaker.failure_verdicts[1]",
        "unknown verdict 'nope'; allowed: conflict, connection_error",
        id="verdicts-unknown",
    ),
    pytest.param(
        {"breaker": {"failure_verdicts": ["caller_error"]}},
        "breaker.failure_verdicts[0]",
        "says nothing about the target's health",
        id="verdicts-caller-error",
    ),
    # fallback: switches
    pytest.param(
        {"fallback": {"continuation": "true"}}, "fallback.continuation", "true or false", id="continuation"
    ),
    pytest.param(
        {"fallback": {"forced_failures": {"gpt-4o": "sever_error"}}},
        "fallback.forced_failures.gpt-4o",
        "unknown verdict 'sever_error'",
        id="forced-unknown",
    ),
    pytest.param(
        {"fallback": {"forced_failures": {"gpt-4o": "success"}}},
        "fallback.forced_failures.gpt-4o",
        "is not a failure",
        id="forced-success",
    ),
    pytest.param({"fallback": {"surprise": 1}}, "fallback.surprise", "unknown key", id="fallback-unknown"),
    # fallback: targets
    pytest.param(
        with_target(api_key_env=MISSING_ENV),
        "fallback.targets.azure.api_key_env",
        "names an environment variable that is not set",
        id="env-missing",
    ),
    pytest.param(with_target(client="x"), "fallback.targets.azure.client", "code-only", id="target-client"),
    pytest.param(with_target(name="x"), "fallback.targets.azure.name", "table key", id="target-name"),
    pytest.param(
        with_target(base_url="ftp://example.com"),
        "fallback.targets.azure.base_url",
        "must be an http(s) URL",
        id="base-url-scheme",
    ),
    pytest.param(
        with_target(model=""), "fallback.targets.azure.model", "non-empty string", id="target-model"
    ),
    pytest.param(
        with_target(organization=7), "fallback.targets.azure.organization", "got 7", id="target-organization"
    ),
    pytest.param(
        with_target(accepts_prefill="yes"),
        "fallback.targets.azure.accepts_prefill",
        "true or false",
        id="prefill",
    ),
    pytest.param(
        with_target(retry={"rules": {"timeout": {"attempts": 0}}}),
        "fallback.targets.azure.retry.rules.timeout.attempts",
        "integer >= 1",
        id="target-retry",
    ),
    pytest.param(
        with_target(breaker={"mode": "always"}),
        "fallback.targets.azure.breaker.mode",
        "must be one of",
        id="target-breaker",
    ),
    pytest.param(
        {"fallback": {"targets": []}}, "fallback.targets", "must be a table", id="targets-not-table"
    ),
    # fallback: routes and steps
    pytest.param(
        with_steps({"kind": "model", "model": "gpt-4o-mini"}, {"kind": "target", "target": "azur"}),
        "fallback.routes.gpt-4o.steps[1].target",
        "unknown target 'azur'; defined targets: azure",
        id="step-unknown-target",
    ),
    pytest.param(
        with_steps({"model": "gpt-4o-mini"}),
        "fallback.routes.gpt-4o.steps[0].kind",
        "required; one of 'model', 'target', 'cache', 'canned'",
        id="step-no-kind",
    ),
    pytest.param(
        with_steps({"kind": "function"}),
        "fallback.routes.gpt-4o.steps[0].function",
        "required for a 'function' step",
        id="step-function-without-its-name",
    ),
    pytest.param(
        with_steps({"kind": "function", "function": ""}),
        "fallback.routes.gpt-4o.steps[0].function",
        "must be a non-empty string",
        id="step-function-empty-name",
    ),
    pytest.param(
        with_steps({"kind": "retry"}),
        "fallback.routes.gpt-4o.steps[0].kind",
        "got 'retry'",
        id="step-bad-kind",
    ),
    pytest.param(
        with_steps({"kind": "model"}),
        "fallback.routes.gpt-4o.steps[0].model",
        "required for a 'model' step",
        id="step-model-missing",
    ),
    pytest.param(
        with_steps({"kind": "canned"}),
        "fallback.routes.gpt-4o.steps[0].text",
        "required for a 'canned' step",
        id="step-text-missing",
    ),
    pytest.param(
        with_steps({"kind": "model", "model": "gpt-4o"}),
        "fallback.routes.gpt-4o.steps[0].model",
        "route's own model",
        id="step-same-model",
    ),
    pytest.param(
        with_steps({"kind": "cache", "text": "hi"}),
        "fallback.routes.gpt-4o.steps[0].text",
        "not used by a 'cache' step",
        id="step-field-of-other-kind",
    ),
    pytest.param(
        with_steps({"kind": "cache", "colour": "red"}),
        "fallback.routes.gpt-4o.steps[0].colour",
        "unknown key; allowed: accepts_prefill, function, json, kind, model, target, text, tool_call",
        id="step-unknown-key",
    ),
    pytest.param(
        with_steps({"kind": "canned", "text": "Sorry {user}, {model} failed"}),
        "fallback.routes.gpt-4o.steps[0].text",
        "may only use {model} and {reason}, got {user}",
        id="template-field",
    ),
    pytest.param(
        with_steps({"kind": "canned", "text": "Sorry {"}),
        "fallback.routes.gpt-4o.steps[0].text",
        "not a valid template",
        id="template-syntax",
    ),
    pytest.param(
        with_steps({"kind": "canned", "text": "{model:d}"}),
        "fallback.routes.gpt-4o.steps[0].text",
        "cannot be formatted",
        id="template-spec",
    ),
    pytest.param(
        {"fallback": {"routes": {"gpt-4o": {"steps": {"kind": "cache"}}}}},
        "fallback.routes.gpt-4o.steps",
        "must be a list",
        id="steps-not-list",
    ),
    pytest.param(
        {"fallback": {"routes": {"gpt-4o": {"context_model": "gpt-4o"}}}},
        "fallback.routes.gpt-4o.context_model",
        "route's own model",
        id="context-model-same",
    ),
    pytest.param(
        {"fallback": {"routes": {"gpt-4.1": {"content_policy": {"kind": "function"}}}}},
        'fallback.routes."gpt-4.1".content_policy.function',
        "required for a 'function' step",
        id="content-policy-function-quoted-key",
    ),
    pytest.param(
        {"fallback": {"routes": {"*": {"stesp": []}}}},
        'fallback.routes."*".stesp',
        "did you mean 'steps'",
        id="route-unknown-key",
    ),
    # retry budget
    pytest.param(
        {"retry": {"budget": {"ratio": 1.5}}},
        "retry.budget.ratio",
        "a number in [0, 1], got 1.5",
        id="budget-ratio",
    ),
    pytest.param(
        {"retry": {"budget": {"window": 0}}}, "retry.budget.window", "number > 0", id="budget-window"
    ),
    pytest.param(
        {"retry": {"budget": {"min_per_second": -1.0}}},
        "retry.budget.min_per_second",
        "must be a number >= 0, got -1.0",
        id="budget-floor-negative",
    ),
    pytest.param(
        {"retry": {"budget": {"ratio": 0.0, "min_per_second": 0.0}}},
        "retry.budget.min_per_second",
        "must be > 0 when ratio is 0, or no retry could ever be made"
        " (to turn the budget off, set enabled = false)",
        id="budget-allows-nothing",
    ),
    pytest.param(
        {"retry": {"budget": {"enabled": "yes"}}},
        "retry.budget.enabled",
        "true or false",
        id="budget-enabled",
    ),
    pytest.param(
        {"retry": {"budget": {"percent": 20}}},
        "retry.budget.percent",
        "unknown key; allowed: enabled, min_per_second, ratio, window",
        id="budget-unknown-key",
    ),
    # cache and validation
    pytest.param({"cache": {"max_entries": 0}}, "cache.max_entries", "integer >= 1", id="cache-entries"),
    pytest.param({"cache": {"max_bytes": 1.5}}, "cache.max_bytes", "integer >= 1", id="cache-bytes"),
    pytest.param({"cache": {"ttl": 0}}, "cache.ttl", "number > 0", id="cache-ttl"),
    pytest.param(
        {"timeouts": {"connect": 1e10}},
        "timeouts.connect",
        "must be a number <= 3600, got 10000000000.0",
        id="connect-huge",
    ),
    pytest.param({"timeouts": {"total": 86401}}, "timeouts.total", "<= 86400", id="total-above-a-day"),
    pytest.param({"breaker": {"fail_max": 10**7}}, "breaker.fail_max", "<= 1000000", id="count-huge"),
    pytest.param(
        {"cache": {"read_through": 0}}, "cache.read_through", "true or false", id="cache-read-through"
    ),
    pytest.param(
        {"validation": {"enabled": None}}, "validation.enabled", "true or false", id="validation-enabled"
    ),
    pytest.param(
        {"validation": {"context_windows": {"gpt-4o": 0}}},
        "validation.context_windows.gpt-4o",
        "integer >= 1, got 0",
        id="context-window",
    ),
    pytest.param(
        {"validation": {"context_windows": [128000]}},
        "validation.context_windows",
        "must be a table",
        id="context-windows-not-table",
    ),
]


@pytest.mark.parametrize(("data", "path", "fragment"), ONE_MISTAKE)
def test_one_mistake_gives_one_message_naming_its_key(data: Any, path: str, fragment: str) -> None:
    """Each rule: one bad key yields exactly one problem, which starts with that key's path."""
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems[0]
    assert fragment in problems[0], problems[0]


def test_several_mistakes_give_one_line_each() -> None:
    """A policy with four mistakes in different sections reports all four, one line each."""
    data = {
        "retry": {"rules": {"server_errr": {}}},
        "timeouts": {"attempt": "30s"},
        "breaker": {"fail_max": 0, "mode": "ratoi"},
    }
    with pytest.raises(ConfigError) as info:
        Policy.from_dict(data)
    paths = [problem.split(":")[0] for problem in info.value.problems]
    assert paths == ["retry.rules.server_errr", "timeouts.attempt", "breaker.mode", "breaker.fail_max"]
    assert str(info.value).count("\n  - ") == 4


def test_empty_dict_is_the_default_policy() -> None:
    """An empty file means Policy()."""
    assert Policy.from_dict({}) == Policy()


def test_partial_rule_keeps_other_rules_and_fields() -> None:
    """Setting one field of one rule leaves every other rule and field at its default."""
    policy = Policy.from_dict({"retry": {"rules": {"rate_limited": {"attempts": 5}}}})
    assert policy.retry.rules[Verdict.RATE_LIMITED] == RetryRule(attempts=5)
    assert set(policy.retry.rules) == RETRYABLE_VERDICTS
    assert policy.retry.model_copy(update={"rules": RetryPolicy().rules}) == RetryPolicy()


def test_target_sections_start_from_the_top_level_ones() -> None:
    """A target's retry / breaker override the top-level sections; absent means inherit (None)."""
    data = {
        "retry": {"max_retry_after": 30},
        "breaker": {"mode": "ratio"},
        "fallback": {
            "targets": {
                "azure": {
                    "api_key_env": KEY_ENV,
                    "retry": {"rules": {"timeout": {"attempts": 2}}},
                    "breaker": {},
                },
                "local": {"base_url": "http://localhost:8000/v1"},
            }
        },
    }
    targets = Policy.from_dict(data).fallback.targets
    azure_retry = targets["azure"].retry
    azure_breaker = targets["azure"].breaker
    assert azure_retry is not None
    assert azure_breaker is not None
    assert azure_retry.max_retry_after == 30.0
    assert azure_retry.rules[Verdict.TIMEOUT].attempts == 2
    assert azure_breaker.mode == "ratio"
    assert targets["local"] == Target(name="local", base_url="http://localhost:8000/v1")


def test_target_budget_starts_from_the_top_level_one() -> None:
    """A target's retry budget keys override the top-level budget's; the rest are inherited."""
    data = {
        "retry": {"budget": {"ratio": 0.1, "window": 30.0}},
        "fallback": {"targets": {"azure": {"api_key_env": KEY_ENV, "retry": {"budget": {"window": 5.0}}}}},
    }
    policy = Policy.from_dict(data)
    azure_retry = policy.fallback.targets["azure"].retry
    assert azure_retry is not None
    assert azure_retry.budget == RetryBudget(ratio=0.1, window=5.0)
    assert policy.retry.budget == RetryBudget(ratio=0.1, window=30.0)


def test_a_budget_that_is_off_may_allow_nothing() -> None:
    """ratio and floor both 0 is refused only while the budget is on."""
    assert not RetryBudget(enabled=False, ratio=0.0, min_per_second=0.0).enabled


def test_null_is_a_value_not_an_absence() -> None:
    """An explicit None is accepted where the field allows None, and refused where it does not."""
    policy = Policy.from_dict({"breaker": {"slow_call_threshold": None}})
    assert policy.breaker.slow_call_threshold is None
    assert problems_of({"breaker": {"fail_max": None}}) == (
        "breaker.fail_max: must be an integer >= 1, got None",
    )


def test_blank_name_is_refused_as_blank() -> None:
    """A name of only spaces is a string, so the message says it is blank and does not repeat it."""
    assert problems_of(with_target(model="  ")) == (
        "fallback.targets.azure.model: must be a non-empty string",
    )


def test_literal_api_key_is_refused_without_echoing_it() -> None:
    """A key in the file is an error that never repeats the key."""
    with pytest.raises(ConfigError) as info:
        Policy.from_dict(with_target(api_key=SECRET))
    assert info.value.problems == (
        "fallback.targets.azure.api_key: secrets never in the file; "
        "use api_key_env (the name of an environment variable holding the key)",
    )
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        pytest.param(
            {"api_key_env": SECRET}, "fallback.targets.azure.api_key_env", id="key-pasted-as-env-name"
        ),
        pytest.param(
            {"api_key_env": "a3f9c2e4b7d1806f5e2c9a4b3d7f1e08"},
            "fallback.targets.azure.api_key_env",
            id="hex-key-pasted-as-env-name",
        ),
        pytest.param(
            {"base_url": f"https://user:{SECRET}@example.com"},
            "fallback.targets.azure.base_url",
            id="url-credentials",
        ),
    ],
)
def test_secret_in_the_wrong_place_is_not_echoed(fields: dict[str, Any], path: str) -> None:
    """A key pasted where a name or URL belongs is reported without printing it."""
    with pytest.raises(ConfigError) as info:
        Policy.from_dict(with_target(**fields))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: ")
    for value in fields.values():
        assert value not in str(info.value)
        assert value not in repr(info.value)


def test_empty_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key variable that is set but empty is an error on api_key_env."""
    monkeypatch.setenv(MISSING_ENV, "")
    (problem,) = problems_of(with_target(api_key_env=MISSING_ENV))
    assert problem.startswith(
        "fallback.targets.azure.api_key_env: names an environment variable that is set but empty"
    )


def test_dump_shows_the_variable_name_never_the_key() -> None:
    """The dumped policy lists api_key_env by name; the key's value appears nowhere."""
    dumped = Policy.from_dict(with_target()).model_dump(mode="json")
    assert dumped["fallback"]["targets"]["azure"]["api_key_env"] == KEY_ENV
    assert SECRET not in json.dumps(dumped)


def test_keys_that_are_not_strings_are_named() -> None:
    """A YAML key such as ``1:`` is reported with its place, not raised as a TypeError."""
    assert problems_of({"breaker": {1: 2}}) == ("breaker: keys must be non-empty strings, got 1",)


def test_example_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/resilience.toml loads once AZURE_OPENAI_API_KEY is set."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "test-key")
    policy = Policy.from_file(EXAMPLE)
    route = policy.fallback.routes["gpt-4o"]
    assert [step.kind for step in route.steps] == ["model", "target", "cache", "canned"]
    assert route.steps[0] == FallbackStep(kind="model", model="gpt-4o-mini")
    assert policy.fallback.targets["azure"].api_key_env == "AZURE_OPENAI_API_KEY"
    assert policy.fallback.routes["*"].steps[-1].kind == "canned"
    assert policy.retry.rules[Verdict.RATE_LIMITED].attempts == 5
    assert Policy.from_dict(json.loads(json.dumps(policy.model_dump(mode="json")))) == policy


def test_example_file_names_the_missing_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AZURE_OPENAI_API_KEY the example fails with exactly that one problem."""
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        Policy.from_file(EXAMPLE)
    (problem,) = info.value.problems
    assert problem.startswith(
        "fallback.targets.azure.api_key_env: names an environment variable that is not set"
    )


TOML_TEXT = f"""
[retry.rules.rate_limited]
attempts = 5

[breaker]
mode = "ratio"
failure_verdicts = ["server_error", "timeout"]

[fallback.targets.azure]
api_key_env = "{KEY_ENV}"

[fallback.routes."*"]
steps = [{{ kind = "target", target = "azure" }}, {{ kind = "canned", text = "down: {{reason}}" }}]
"""

YAML_TEXT = f"""
retry:
  rules:
    rate_limited: {{attempts: 5}}
breaker:
  mode: ratio
  failure_verdicts: [server_error, timeout]
fallback:
  targets:
    azure: {{api_key_env: {KEY_ENV}}}
  routes:
    "*":
      steps:
        - {{kind: target, target: azure}}
        - {{kind: canned, text: "down: {{reason}}"}}
"""


@pytest.mark.parametrize(
    ("name", "text"), [("p.toml", TOML_TEXT), ("p.yaml", YAML_TEXT), ("p.yml", YAML_TEXT)]
)
def test_toml_and_yaml_load_the_same_policy(tmp_path: Path, name: str, text: str) -> None:
    """The same policy written in TOML or YAML loads to the same Policy."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    policy = Policy.from_file(path)
    assert policy.retry.rules[Verdict.RATE_LIMITED].attempts == 5
    assert policy.breaker.failure_verdicts == frozenset({Verdict.SERVER_ERROR, Verdict.TIMEOUT})
    assert policy.fallback.routes["*"] == Route(
        steps=(
            FallbackStep(kind="target", target="azure"),
            FallbackStep(kind="canned", text="down: {reason}"),
        )
    )


def test_empty_yaml_is_the_default_policy(tmp_path: Path) -> None:
    """A YAML file holding only a comment is an empty policy."""
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert Policy.from_file(path) == Policy()


def test_yaml_without_pyyaml_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyYAML, a YAML file fails with the extra to install."""
    monkeypatch.setitem(sys.modules, "yaml", None)
    path = tmp_path / "p.yaml"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"install resilient-openai\[yaml\]"):
        load_file(path)


def test_unknown_suffix_names_the_allowed_ones(tmp_path: Path) -> None:
    """A .json file is refused, naming the suffixes that are read."""
    path = tmp_path / "p.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"p\.json: unsupported file type '\.json'; allowed: \.toml, \.yaml, \.yml"
    ):
        load_file(path)


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.toml", "[retry]\nmax_retry_after = \n", "line 2"),
        ("bad.yaml", "retry:\n  rules: [1, 2\n", "line 3, column 1"),
    ],
)
def test_syntax_error_names_file_and_position(tmp_path: Path, name: str, text: str, where: str) -> None:
    """A syntax error names the file and the parser's line and column."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    (problem,) = info.value.problems
    assert name in problem
    assert where in problem


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.toml", None, "cannot read the file"),
        ("latin1.toml", b"a = '\xe9'\n", "not UTF-8"),
        ("list.yaml", b"- 1\n- 2\n", "top level must be a table"),
    ],
)
def test_unusable_file_is_named(tmp_path: Path, name: str, content: bytes | None, fragment: str) -> None:
    """An unreadable, undecodable or non-table file is a ConfigError naming the file."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    (problem,) = info.value.problems
    assert problem.startswith(str(path))
    assert fragment in problem


def test_dump_is_plain_data_covering_every_field() -> None:
    """Policy().model_dump(mode="json") is JSON and has one key per field in every section."""
    dumped = Policy().model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    sections: list[tuple[str, type[pydantic.BaseModel]]] = [
        ("retry", RetryPolicy),
        ("timeouts", Timeouts),
        ("breaker", BreakerPolicy),
        ("cache", CachePolicy),
        ("validation", ValidationPolicy),
    ]
    for key, cls in sections:
        assert set(dumped[key]) == set(cls.model_fields), key
    assert set(dumped["retry"]["rules"]["timeout"]) == set(RetryRule.model_fields)
    assert set(dumped["retry"]["budget"]) == set(RetryBudget.model_fields)
    assert dumped["breaker"]["failure_verdicts"] == sorted(dumped["breaker"]["failure_verdicts"])


def test_round_trip_with_targets_and_function_steps() -> None:
    """Feeding the dumped policy back, function steps (by name) and targets included, rebuilds it."""
    data = with_steps(
        {"kind": "target", "target": "azure"},
        {"kind": "function", "function": "apologise"},
        {"kind": "canned", "text": "{model} is down"},
    ) | {"breaker": {"slow_call_threshold": 12.5}}
    policy = Policy.from_dict(data)
    assert policy.fallback.routes["gpt-4o"].steps[1] == FallbackStep(kind="function", function="apologise")
    assert Policy.from_dict(policy.model_dump(mode="json")) == policy


def _ordered(count: int) -> st.SearchStrategy[list[float]]:
    """``count`` positive finite floats in ascending order."""
    value = st.floats(min_value=0.001, max_value=3600.0, allow_nan=False, allow_infinity=False)
    return st.lists(value, min_size=count, max_size=count).map(sorted)


@settings(max_examples=60, deadline=None)
@given(
    limits=_ordered(3),
    inner=st.tuples(st.floats(min_value=0.001, max_value=1.0), st.floats(min_value=0.001, max_value=1.0)),
    rule=st.tuples(st.integers(1, 50), _ordered(2), st.floats(min_value=0.0, max_value=1.0)),
    ratio=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    fail_max=st.integers(1, 10_000),
    windows=st.dictionaries(st.text(min_size=1, max_size=12), st.integers(1, 2_000_000), max_size=3),
)
def test_describe_round_trips_numeric_fields(
    limits: list[float],
    inner: tuple[float, float],
    rule: tuple[int, list[float], float],
    ratio: float,
    fail_max: int,
    windows: dict[str, int],
) -> None:
    """For valid numbers, Policy.from_dict(p.model_dump(mode="json")) == p."""
    connect, attempt, total = limits
    attempts, (base, cap), jitter = rule
    policy = Policy(
        timeouts=Timeouts(
            total=total,
            attempt=attempt,
            connect=connect,
            first_token=total * inner[0],
            stream_idle=total * inner[1],
        ),
        retry=RetryPolicy(
            rules={
                **RetryPolicy().rules,
                Verdict.TIMEOUT: RetryRule(attempts=attempts, base=base, cap=cap, jitter=jitter),
            },
        ),
        breaker=BreakerPolicy(mode="ratio", failure_ratio=ratio, fail_max=fail_max),
        validation=ValidationPolicy(context_windows=windows),
    )
    assert Policy.from_dict(json.loads(json.dumps(policy.model_dump(mode="json")))) == policy
