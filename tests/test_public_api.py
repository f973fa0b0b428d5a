"""The public surface: every exported name, sorted and importable, and no public module by accident."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import resilient_openai

EXPECTED_ALL: dict[str, list[str]] = {
    "resilient_openai": [
        "SYSTEM_CLOCK",
        "AttemptRecord",
        "BreakerPolicy",
        "CachePolicy",
        "CannedToolCall",
        "CircuitOpenError",
        "Classification",
        "Clock",
        "ConfigError",
        "DeadlineExceededError",
        "FallbackPolicy",
        "FallbackStep",
        "IncompleteStreamError",
        "Policy",
        "Provenance",
        "RedisBreakerStorage",
        "RequestRejectedError",
        "ResilienceError",
        "RetryBudget",
        "RetryPolicy",
        "RetryRule",
        "Route",
        "SharedPolicy",
        "Source",
        "SystemClock",
        "Target",
        "Timeouts",
        "UnanswerableError",
        "ValidationPolicy",
        "Verdict",
        "breakers",
        "classify",
        "health",
        "provenance",
        "resilient",
    ],
    "resilient_openai.testing": [
        "Cut",
        "Delay",
        "FakeClock",
        "FakeUpstream",
        "Fault",
        "Garbage",
        "Hold",
        "Malformed",
        "Ok",
        "OneOf",
        "RecordedRequest",
        "Reset",
        "Silence",
        "Stall",
        "Status",
    ],
    "resilient_openai.observe.events": [
        "AttemptFailed",
        "BreakerStateChanged",
        "CallCompleted",
        "CallRejected",
        "Event",
        "EventBus",
        "FallbackServed",
        "Listener",
        "RetryBudgetExhausted",
        "RetryScheduled",
        "StreamEventSkipped",
    ],
    "resilient_openai.observe.logging": ["LOGGER_NAME", "LoggingListener"],
    "resilient_openai.observe.prometheus": [
        "BREAKER_STATE_VALUES",
        "DURATION_BUCKETS",
        "OTHER",
        "PrometheusListener",
    ],
    "resilient_openai.observe.otel": ["DURATION_BUCKETS", "OpenTelemetryListener", "gen_ai_operation_name"],
    "resilient_openai.observe.redact": [
        "DEFAULT_LOGGERS",
        "REDACTED",
        "RedactingFilter",
        "install_redaction",
        "redact",
    ],
}

#: Every module a user may import. Anything else must live under a name starting with ``_``.
PUBLIC_MODULES = frozenset(
    {
        "resilient_openai.cli",
        "resilient_openai.observe",
        "resilient_openai.observe.events",
        "resilient_openai.observe.logging",
        "resilient_openai.observe.otel",
        "resilient_openai.observe.prometheus",
        "resilient_openai.observe.redact",
        "resilient_openai.testing",
    }
)


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's ``__all__`` order (RUF022): SCREAMING_CASE, then CamelCase, then the rest."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("module_name", sorted(EXPECTED_ALL))
def test_all_is_the_expected_list(module_name: str) -> None:
    """``__all__`` of each public module is exactly the names we mean to export."""
    module = importlib.import_module(module_name)
    assert list(module.__all__) == EXPECTED_ALL[module_name]


@pytest.mark.parametrize("module_name", sorted(EXPECTED_ALL))
def test_all_is_sorted(module_name: str) -> None:
    """``__all__`` is sorted: constants, then classes, then functions, each alphabetically."""
    names = list(importlib.import_module(module_name).__all__)
    assert names == sorted(names, key=_isort_key)


@pytest.mark.parametrize(
    ("module_name", "name"), [(module, name) for module, names in EXPECTED_ALL.items() for name in names]
)
def test_every_exported_name_is_importable(module_name: str, name: str) -> None:
    """``from <module> import <name>`` works for every name in ``__all__``."""
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(module_name), name)


def test_star_import_gives_exactly_all() -> None:
    """``from resilient_openai import *`` binds the names in ``__all__`` and nothing else."""
    namespace: dict[str, object] = {}
    exec("from resilient_openai import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == sorted(EXPECTED_ALL["resilient_openai"])


def _public_module_names() -> set[str]:
    """Dotted names of every module in the package with no ``_``-prefixed component."""
    return {
        info.name
        for info in pkgutil.walk_packages(resilient_openai.__path__, prefix="resilient_openai.")
        if not any(part.startswith("_") for part in info.name.split("."))
    }


def test_no_public_module_beyond_the_allow_list() -> None:
    """Every module without a ``_`` in its path is one we chose to make public."""
    assert _public_module_names() - PUBLIC_MODULES == set()


def test_every_allowed_module_exists() -> None:
    """The allow-list names modules that exist, so it cannot silently go stale."""
    assert PUBLIC_MODULES - _public_module_names() == set()
