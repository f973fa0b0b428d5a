"""Policy files: read TOML or YAML, check every key once, and build a :class:`Policy`.

The file mirrors the dataclass tree in :mod:`resilient_openai._policy`; every section and key is
optional and an absent one keeps its default::

    [retry]                      max_retry_after, honor_should_retry, max_open_wait
    [retry.rules.<verdict>]      attempts, base, cap, jitter (merged over the default rule)
    [timeouts]                   total, attempt, connect, first_token, stream_idle
    [breaker]                    enabled, mode, fail_max, failure_ratio, window, min_calls, ...
    [fallback]                   continuation, forced_failures = {<model or target> = <verdict>}
    [fallback.targets.<name>]    base_url, api_key_env, organization, project, model,
                                 accepts_prefill, and optional [retry] / [breaker] of its own
    [fallback.routes.<model>]    steps = [{kind = "model" | "target" | "cache" | "canned", ...}],
                                 context_model, content_policy (one step); "*" matches any model
    [cache]                      enabled, max_entries, max_bytes, ttl, read_through
    [validation]                 enabled, context_windows = {<model prefix> = <tokens>}

How values merge: ``retry.rules`` starts from the default rules (one per retryable verdict), so a
file that sets only ``retry.rules.rate_limited.attempts`` keeps everything else. A target's own
``retry`` / ``breaker`` section starts from the top-level one in the same file and overrides what
it sets; leaving it out (or ``null`` in YAML) means "use the top-level policy at run time".
"Unset" and ``None`` differ: an absent key keeps its default, an explicit ``null`` is a value and
is refused wherever ``None`` is not allowed.

Cross-field rules are enforced only where one setting makes another one dead, never as taste:

* ``timeouts.connect <= timeouts.attempt`` (``attempt`` bounds every network wait, connecting
  included) and ``attempt``, ``first_token``, ``stream_idle <= timeouts.total`` (``total`` bounds
  the whole call): a longer inner limit could never fire.
* ``retry.rules.<v>.base <= cap`` and ``breaker.break_duration <= break_max``: the cap would
  override the first value every time.
* A fallback step after a ``canned`` step is unreachable (a canned reply always answers), and a
  ``model`` step or ``context_model`` naming the route's own model is a retry in disguise.
* ``breaker.failure_verdicts`` may not list outcomes that say nothing about the target's health
  (success, cancellation, an open circuit, the caller's own mistakes).

Secrets never live in the file: a target's key comes from the environment variable named by
``api_key_env``, which must be set when the file is loaded; a literal ``api_key`` is refused and
never echoed. Code-only objects (``clock``, ``listeners``, a target's ``client``, ``function``
steps) come from code: ``clock`` and ``listeners`` through ``overrides``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import openai

from ._classify import Verdict
from ._clock import Clock
from ._errors import ConfigError
from ._policy import (
    RETRYABLE_VERDICTS,
    BreakerPolicy,
    CachePolicy,
    FallbackKind,
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

if TYPE_CHECKING:
    from pathlib import Path

    from _typeshed import DataclassInstance

__all__ = ["check_policy", "describe_policy", "load_file", "policy_from_dict"]

_D = TypeVar("_D", bound="DataclassInstance")

#: What :func:`describe_policy` writes for objects that only code can supply.
CODE_PLACEHOLDER: Final = "<code>"

_SUFFIXES: Final = (".toml", ".yaml", ".yml")
_SECRET_MESSAGE: Final = (
    "secrets never in the file; use api_key_env (the name of an environment variable holding the key)"
)
_VERDICTS: Final = {verdict.value: verdict for verdict in Verdict}
_RETRYABLE_NAMES: Final = ", ".join(sorted(verdict.value for verdict in RETRYABLE_VERDICTS))
#: Verdicts that may count as breaker failures: not those that say nothing about a target's health.
_BREAKER_FAILURES: Final = frozenset(Verdict) - {
    Verdict.SUCCESS,
    Verdict.CANCELLED,
    Verdict.CIRCUIT_OPEN,
    Verdict.CALLER_ERROR,
    Verdict.CONTEXT_LENGTH_EXCEEDED,
    Verdict.CONTENT_FILTERED,
}
#: Verdicts ``fallback.forced_failures`` may fake.
_FORCEABLE: Final = frozenset(Verdict) - {Verdict.SUCCESS}
#: The one field each kind of step needs, besides ``kind`` (none for ``cache``).
_STEP_FIELD: Final[Mapping[str, str | None]] = {
    "model": "model",
    "target": "target",
    "cache": None,
    "canned": "text",
}
_FILE_STEP_KINDS: Final = tuple(_STEP_FIELD)
#: In code a step may also be a ``function``, which needs its callable.
_CODE_STEP_FIELD: Final[Mapping[str, str | None]] = {**_STEP_FIELD, "function": "function"}
#: A target's settings that only build a client: dead (so ambiguous) when a ``client`` is given.
_CLIENT_SETTINGS: Final = ("base_url", "api_key_env", "organization", "project")
_TEMPLATE_FIELDS: Final = ("model", "reason")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SHOW_LIMIT: Final = 60


class _Mark(Enum):
    """Sentinels: a key the data does not set, and a value that failed its check."""

    UNSET = "unset"
    INVALID = "invalid"


_UNSET: Final = _Mark.UNSET
_INVALID: Final = _Mark.INVALID

#: Checks one value found at a dotted path: the value to use, or ``_INVALID`` once reported.
_Checker = Callable[[Any, str, "_Problems"], Any]


class _Problems:
    """Every mistake found so far, one line each, in the order the data was walked."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        """Record that the value at ``path`` is wrong, and why."""
        self.lines.append(f"{path or '(top level)'}: {message}")


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def load_file(path: Path) -> Mapping[str, Any]:
    """Read a policy file into plain data: ``.toml``, or ``.yaml`` / ``.yml`` with PyYAML.

    Every failure (unknown suffix, unreadable file, bad encoding, syntax error with its line and
    column, YAML without PyYAML) is a :class:`ConfigError` naming the file.
    """
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError([f"{path}: unsupported file type {path.suffix!r}; allowed: {', '.join(_SUFFIXES)}"])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from exc
    data = _parse_toml(path, text) if suffix == ".toml" else _parse_yaml(path, text)
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: the top level must be a table of sections, got {type(data).__name__}"])
    return data


def _parse_toml(path: Path, text: str) -> Any:
    """Parse TOML; the error message from ``tomllib`` already carries the line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc


def _parse_yaml(path: Path, text: str) -> Any:
    """Parse YAML safely (plain data only); an empty document is an empty policy."""
    try:
        import yaml
    except ImportError as exc:
        raise ConfigError(
            [f"{path}: reading YAML needs PyYAML; install resilient-openai[yaml] (or use a .toml file)"]
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
        raise ConfigError([f"{path}: invalid YAML{where}: {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from exc
    return {} if data is None else data


# --------------------------------------------------------------------------------------------
# Small helpers: paths, values, tables
# --------------------------------------------------------------------------------------------


def _child(path: str, key: str) -> str:
    """The dotted path of ``key`` under ``path``, quoting keys the way TOML would need them."""
    part = key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


def _show(value: object) -> str:
    """A short ``repr`` of a bad value for a message."""
    shown = repr(value)
    return shown if len(shown) <= _SHOW_LIMIT else shown[: _SHOW_LIMIT - 3] + "..."


def _names(values: Iterable[str]) -> str:
    """``'a', 'b'`` for a message listing allowed string values."""
    return ", ".join(repr(value) for value in values)


def _table(data: Any, path: str, problems: _Problems) -> dict[str, Any] | None:
    """``data`` as a table with non-empty string keys, or None (reported) when it is not a table."""
    if not isinstance(data, Mapping):
        problems.add(path, f"must be a table, got {_show(data)}")
        return None
    table: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and key:
            table[key] = value
        else:
            problems.add(path, f"keys must be non-empty strings, got {_show(key)}")
    return table


def _unknown(path: str, key: str, allowed: Iterable[str], problems: _Problems) -> None:
    """Report a key that has no meaning here, with the allowed ones (never the key's value)."""
    if key == "api_key":
        problems.add(path, _SECRET_MESSAGE)
        return
    allowed = sorted(allowed)
    guess = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    problems.add(path, f"unknown key; allowed: {', '.join(allowed)}{hint}")


def _fields(
    table: Mapping[str, Any],
    path: str,
    checkers: Mapping[str, _Checker],
    problems: _Problems,
    special: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """Check each key of ``table``: the valid values by key, and the keys whose value was bad.

    Keys without a checker are reported as unknown, or with their own explanation in ``special``.
    """
    good: dict[str, Any] = {}
    bad: set[str] = set()
    for key, value in table.items():
        where = _child(path, key)
        checker = checkers.get(key)
        if checker is None:
            if special and key in special:
                problems.add(where, special[key])
            else:
                _unknown(where, key, checkers, problems)
            continue
        checked = checker(value, where, problems)
        if checked is _INVALID:
            bad.add(key)
        else:
            good[key] = checked
    return good, bad


def _check_order(
    built: object,
    path: str,
    good: Mapping[str, Any],
    bad: set[str],
    pairs: Sequence[tuple[str, str]],
    why: str,
    problems: _Problems,
) -> None:
    """Report every ``low <= high`` pair that ``built`` breaks, once per key the data set.

    The blame goes to the key the data set (the higher one when it set both); a pair whose keys
    were both left at their base values, or one of which was already reported, is not checked.
    """
    needs: dict[str, list[str]] = {}
    for low, high in pairs:
        if low in bad or high in bad or (low not in good and high not in good):
            continue
        low_value, high_value = getattr(built, low), getattr(built, high)
        if low_value is None or high_value is None or low_value <= high_value:
            continue
        if high in good:
            needs.setdefault(high, []).append(f">= {low} ({low_value!r})")
        else:
            needs.setdefault(low, []).append(f"<= {high} ({high_value!r})")
    for key, parts in needs.items():
        problems.add(_child(path, key), f"must be {' and '.join(parts)}, got {getattr(built, key)!r} ({why})")


def _section(
    data: Any,
    path: str,
    base: _D,
    checkers: Mapping[str, _Checker],
    problems: _Problems,
    *,
    order: Sequence[tuple[str, str]] = (),
    why: str = "",
) -> _D:
    """``base`` with the keys ``data`` sets, each checked; ``base`` itself when unset or no table."""
    if data is _UNSET:
        return base
    table = _table(data, path, problems)
    if table is None:
        return base
    good, bad = _fields(table, path, checkers, problems)
    built = dataclasses.replace(base, **good)
    _check_order(built, path, good, bad, order, why, problems)
    return built


# --------------------------------------------------------------------------------------------
# Value checkers
# --------------------------------------------------------------------------------------------


def _number(what: str, accept: Callable[[float], bool]) -> _Checker:
    """A checker for a finite int or float (never a bool) that ``accept`` allows, as a float."""

    def check(value: Any, path: str, problems: _Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(path, f"must be {what}, got {_show(value)}")
            return _INVALID
        if not math.isfinite(value) or not accept(value):
            extra = " (not a finite number)" if not math.isfinite(value) else ""
            problems.add(path, f"must be {what}, got {_show(value)}{extra}")
            return _INVALID
        return float(value)

    return check


def _integer(minimum: int) -> _Checker:
    """A checker for an int (never a bool, never 5.0) of at least ``minimum``."""

    def check(value: Any, path: str, problems: _Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.add(path, f"must be an integer >= {minimum}, got {_show(value)}")
            return _INVALID
        return value

    return check


def _flag(value: Any, path: str, problems: _Problems) -> Any:
    """Check a strict boolean: ``true`` / ``false``, not 0, 1 or "yes"."""
    if not isinstance(value, bool):
        problems.add(path, f"must be true or false, got {_show(value)}")
        return _INVALID
    return value


def _choice(*options: str) -> _Checker:
    """A checker for one of a few fixed strings."""

    def check(value: Any, path: str, problems: _Problems) -> Any:
        if not isinstance(value, str) or value not in options:
            problems.add(path, f"must be one of {_names(options)}, got {_show(value)}")
            return _INVALID
        return value

    return check


def _text(value: Any, path: str, problems: _Problems) -> Any:
    """Check a non-empty string, such as a model name."""
    if not isinstance(value, str) or not value.strip():
        problems.add(path, f"must be a non-empty string, got {_show(value)}")
        return _INVALID
    return value


def _optional(checker: _Checker) -> _Checker:
    """``checker``, but an explicit ``None`` (YAML ``null``) is accepted as None."""

    def check(value: Any, path: str, problems: _Problems) -> Any:
        return None if value is None else checker(value, path, problems)

    return check


_POSITIVE: Final = _number("a number > 0", lambda x: x > 0)
_NON_NEGATIVE: Final = _number("a number >= 0", lambda x: x >= 0)
_RATIO: Final = _number("a number in (0, 1]", lambda x: 0 < x <= 1)
_FRACTION: Final = _number("a number in [0, 1]", lambda x: 0 <= x <= 1)
_AT_LEAST_ONE: Final = _number("a number >= 1", lambda x: x >= 1)
_COUNT: Final = _integer(1)


def _verdict(value: Any, path: str, allowed: frozenset[Verdict], why: str, problems: _Problems) -> Any:
    """Check the name of one of the ``allowed`` verdicts; ``why`` says what the others lack."""
    verdict = _VERDICTS.get(value) if isinstance(value, str) else None
    names = ", ".join(sorted(verdict.value for verdict in allowed))
    if verdict is None:
        problems.add(path, f"unknown verdict {_show(value)}; allowed: {names}")
        return _INVALID
    if verdict not in allowed:
        problems.add(path, f"{verdict.value!r} {why}; allowed: {names}")
        return _INVALID
    return verdict


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _rule(data: Any, path: str, base: RetryRule, problems: _Problems) -> RetryRule:
    """One verdict's retry rule: the keys ``data`` sets over ``base``."""
    checkers = {"attempts": _COUNT, "base": _NON_NEGATIVE, "cap": _NON_NEGATIVE, "jitter": _FRACTION}
    return _section(
        data, path, base, checkers, problems, order=[("base", "cap")], why="cap is the longest wait"
    )


def _rules(data: Any, path: str, base: Mapping[Verdict, RetryRule], problems: _Problems) -> Any:
    """Retry rules by verdict name, each merged over the same verdict's rule in ``base``."""
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    rules = dict(base)
    for name, raw in table.items():
        where = _child(path, name)
        verdict = _VERDICTS.get(name)
        if verdict is None:
            problems.add(where, f"unknown verdict; allowed: {_RETRYABLE_NAMES}")
        elif verdict not in RETRYABLE_VERDICTS:
            problems.add(
                where,
                f"{name!r} is never retried (retrying cannot change it); "
                f"retry rules exist only for: {_RETRYABLE_NAMES}",
            )
        else:
            rules[verdict] = _rule(raw, where, rules.get(verdict, RetryRule()), problems)
    return rules


def _retry(data: Any, path: str, base: RetryPolicy, problems: _Problems) -> RetryPolicy:
    """The retry section: rules merged over ``base.rules``, plus the server-advice settings."""
    checkers: dict[str, _Checker] = {
        "rules": lambda value, where, found: _rules(value, where, base.rules, found),
        "max_retry_after": _NON_NEGATIVE,
        "honor_should_retry": _flag,
        "max_open_wait": _NON_NEGATIVE,
    }
    return _section(data, path, base, checkers, problems)


def _timeouts(data: Any, path: str, problems: _Problems) -> Timeouts:
    """The timeouts section: positive seconds, inner limits no longer than the ones bounding them."""
    checkers = dict.fromkeys(("total", "attempt", "connect", "first_token", "stream_idle"), _POSITIVE)
    order = [("connect", "attempt"), ("attempt", "total"), ("first_token", "total"), ("stream_idle", "total")]
    why = "a limit longer than the one bounding it could never fire"
    return _section(data, path, Timeouts(), checkers, problems, order=order, why=why)


def _failure_verdicts(value: Any, path: str, problems: _Problems) -> Any:
    """Check a non-empty list of verdict names that can mean "this target is unhealthy"."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        problems.add(path, f"must be a list of verdict names, got {_show(value)}")
        return _INVALID
    items = list(value)
    if not items:
        problems.add(path, "must name at least one verdict (to turn the breaker off, set enabled = false)")
        return _INVALID
    verdicts: set[Verdict] = set()
    ok = True
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        verdict = _verdict(item, where, _BREAKER_FAILURES, "says nothing about the target's health", problems)
        if verdict is _INVALID:
            ok = False
        else:
            verdicts.add(verdict)
    return frozenset(verdicts) if ok else _INVALID


def _breaker(data: Any, path: str, base: BreakerPolicy, problems: _Problems) -> BreakerPolicy:
    """The breaker section: the keys ``data`` sets over ``base``."""
    checkers: dict[str, _Checker] = {
        "enabled": _flag,
        "mode": _choice("consecutive", "ratio"),
        "fail_max": _COUNT,
        "failure_ratio": _RATIO,
        "window": _POSITIVE,
        "min_calls": _COUNT,
        "slow_call_threshold": _optional(_POSITIVE),
        "slow_call_ratio": _RATIO,
        "break_duration": _POSITIVE,
        "break_multiplier": _AT_LEAST_ONE,
        "break_max": _POSITIVE,
        "half_open_probes": _COUNT,
        "close_after": _COUNT,
        "probe_lease": _POSITIVE,
        "failure_verdicts": _failure_verdicts,
        "quota_break": _NON_NEGATIVE,
        "max_breakers": _COUNT,
    }
    order = [("break_duration", "break_max")]
    return _section(data, path, base, checkers, problems, order=order, why="break_max caps every open period")


def _cache(data: Any, path: str, problems: _Problems) -> CachePolicy:
    """The response cache section."""
    checkers = {
        "enabled": _flag,
        "max_entries": _COUNT,
        "max_bytes": _COUNT,
        "ttl": _POSITIVE,
        "read_through": _flag,
    }
    return _section(data, path, CachePolicy(), checkers, problems)


def _context_windows(value: Any, path: str, problems: _Problems) -> Any:
    """Context windows in tokens by model name (prefix)."""
    table = _table(value, path, problems)
    if table is None:
        return _INVALID
    windows: dict[str, int] = {}
    for model, tokens in table.items():
        checked = _COUNT(tokens, _child(path, model), problems)
        if checked is not _INVALID:
            windows[model] = checked
    return windows


def _validation(data: Any, path: str, problems: _Problems) -> ValidationPolicy:
    """The pre-send validation section."""
    checkers = {"enabled": _flag, "context_windows": _context_windows}
    return _section(data, path, ValidationPolicy(), checkers, problems)


# --------------------------------------------------------------------------------------------
# Fallback: targets, routes, steps
# --------------------------------------------------------------------------------------------


def _base_url(value: Any, path: str, problems: _Problems) -> Any:
    """Check an http(s) URL with a host; one carrying credentials is refused without echoing it."""
    if not isinstance(value, str):
        problems.add(path, f"must be an http(s) URL, got {_show(value)}")
        return _INVALID
    try:
        parts = urlsplit(value)
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError:
        problems.add(path, "must be an http(s) URL such as 'https://example.com/v1', got an unparsable one")
        return _INVALID
    if has_credentials:
        problems.add(path, f"must not carry credentials (not shown); {_SECRET_MESSAGE}")
        return _INVALID
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.add(path, f"must be an http(s) URL such as 'https://example.com/v1', got {_show(value)}")
        return _INVALID
    return value


def _api_key_env(value: Any, path: str, problems: _Problems) -> Any:
    """Check the name of an environment variable that is set now; its value is never shown."""
    if value is None:
        return None
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        # Someone may have pasted the key itself here: describe it without printing it.
        problems.add(
            path,
            "must be the name of an environment variable (letters, digits, _), "
            f"got a {type(value).__name__} that is not one (not shown, in case it is a key)",
        )
        return _INVALID
    current = os.environ.get(value)
    if current is None:
        problems.add(path, f"environment variable {value} is not set (this target's API key is read from it)")
        return _INVALID
    if not current.strip():
        problems.add(
            path, f"environment variable {value} is set but empty (this target's API key is read from it)"
        )
        return _INVALID
    return value


def _client(value: Any, path: str, problems: _Problems) -> Any:
    """Check a target's ready client (given in code); only its type is shown, never its value."""
    if not isinstance(value, openai.OpenAI | openai.AsyncOpenAI):
        problems.add(path, f"must be an openai.OpenAI or openai.AsyncOpenAI, got a {type(value).__name__}")
        return _INVALID
    return value


def _target_name(key: str) -> _Checker:
    """A checker for a code-built target's ``name``, which must be its key in fallback.targets."""

    def check(value: Any, path: str, problems: _Problems) -> Any:
        if value != key:
            problems.add(path, f"must equal its key in fallback.targets, {key!r}, got {_show(value)}")
            return _INVALID
        return value

    return check


def _target(
    name: str,
    data: Any,
    path: str,
    retry: RetryPolicy,
    breaker: BreakerPolicy,
    problems: _Problems,
    *,
    code: bool = False,
) -> Any:
    """One alternate target; its own retry / breaker sections start from the top-level ones.

    ``code``: the target was built in code, so it may carry a ``client`` and its ``name``.
    """
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    checkers: dict[str, _Checker] = {
        "base_url": _optional(_base_url),
        "api_key_env": _api_key_env,
        "organization": _optional(_text),
        "project": _optional(_text),
        "model": _optional(_text),
        "accepts_prefill": _flag,
        "retry": _optional(lambda value, where, found: _retry(value, where, retry, found)),
        "breaker": _optional(lambda value, where, found: _breaker(value, where, breaker, found)),
    }
    special = {
        "client": "code-only: a client object cannot come from a file; build Target(client=...) in code",
        "name": "a target's name is its table key; remove this key",
    }
    if code:
        checkers["client"] = _client
        checkers["name"] = _target_name(name)
        dead = [key for key in _CLIENT_SETTINGS if table.get(key) is not None]
        if table.get("client") is not None and dead:
            # Reported once, on the client; the dead settings are not checked on their own.
            shown = ", ".join(dead)
            problems.add(
                _child(path, "client"),
                f"ambiguous: given together with {shown}, which only build a client when none is "
                f"given; set either client or {shown}",
            )
            table = {key: value for key, value in table.items() if key not in dead}
    good, _ = _fields(table, path, checkers, problems, special)
    good.pop("name", None)
    return Target(name=name, **good)


def _targets(
    data: Any, path: str, retry: RetryPolicy, breaker: BreakerPolicy, problems: _Problems, *, code: bool
) -> Any:
    """Alternate targets by name."""
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    targets: dict[str, Target] = {}
    for name, raw in table.items():
        target = _target(name, raw, _child(path, name), retry, breaker, problems, code=code)
        if target is not _INVALID:
            targets[name] = target
    return targets


def _template(value: Any, path: str, problems: _Problems) -> Any:
    """Check a canned reply: a non-empty ``str.format`` template using only {model} and {reason}."""
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    allowed = " and ".join("{" + name + "}" for name in _TEMPLATE_FIELDS)
    try:
        used = [field for _, field, _, _ in string.Formatter().parse(value) if field is not None]
    except ValueError as exc:
        problems.add(path, f"not a valid template ({exc}); write {{{{ and }}}} for literal braces")
        return _INVALID
    others = sorted({field for field in used if field not in _TEMPLATE_FIELDS})
    if others:
        shown = ", ".join("{" + field + "}" for field in others)
        problems.add(path, f"may only use {allowed}, got {shown}; write {{{{ and }}}} for literal braces")
        return _INVALID
    try:  # The reply is formatted with two strings at run time: conversions and specs must fit them.
        value.format(model="model", reason="reason")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        problems.add(path, f"cannot be formatted with {allowed} ({exc})")
        return _INVALID
    return value


class _StepContext:
    """What a step is checked against: the route it belongs to and the targets defined."""

    def __init__(self, route: str, targets: frozenset[str] | None, *, code: bool) -> None:
        self.route = route
        #: None when fallback.targets itself was unusable (already reported).
        self.targets = targets
        #: The step was built in code: ``function`` steps are allowed, with their callable.
        self.code = code
        self.fields = _CODE_STEP_FIELD if code else _STEP_FIELD


def _step_field(kind: str, value: Any, path: str, context: _StepContext, problems: _Problems) -> Any:
    """Check the one field a step of ``kind`` needs."""
    if kind == "canned":
        return _template(value, path, problems)
    if kind == "function":
        if not callable(value):
            problems.add(path, f"must be callable as function(request_body, reason), got {_show(value)}")
            return _INVALID
        return value
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    if kind == "model" and value == context.route:
        problems.add(
            path,
            f"is the route's own model {value!r}; a fallback must go elsewhere (retries are set in retry)",
        )
        return _INVALID
    if kind == "target" and context.targets is not None and value not in context.targets:
        defined = (
            f"defined targets: {', '.join(sorted(context.targets))}"
            if context.targets
            else "no targets are defined under fallback.targets"
        )
        problems.add(path, f"unknown target {value!r}; {defined}")
        return _INVALID
    return value


def _step(data: Any, path: str, context: _StepContext, problems: _Problems) -> Any:
    """One fallback step from a table such as ``{kind = "target", target = "azure"}``."""
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    kind = table.get("kind", _UNSET)
    kinds = context.fields
    function_message = (
        "code-only: a function step cannot come from a file; add FallbackStep(kind='function', ...) in code"
    )
    if kind is _UNSET:
        problems.add(_child(path, "kind"), f"required; one of {_names(kinds)}")
        return _INVALID
    if kind == "function" and not context.code:
        problems.add(_child(path, "kind"), function_message)
        return _INVALID
    if not isinstance(kind, str) or kind not in kinds:
        hint = "" if context.code else " ('function' steps are code-only)"
        problems.add(_child(path, "kind"), f"must be one of {_names(kinds)}, got {_show(kind)}{hint}")
        return _INVALID
    needed = kinds[kind]
    allowed = ["kind"] if needed is None else ["kind", needed]
    ok = True
    for key in table:
        if key in allowed:
            continue
        ok = False
        where = _child(path, key)
        if key == "function" and not context.code:
            problems.add(where, function_message)
        elif key in kinds.values():
            problems.add(where, f"not used by a {kind!r} step; allowed: {', '.join(allowed)}")
        else:
            _unknown(where, key, allowed, problems)
    values: dict[str, Any] = {}
    if needed is not None:
        where = _child(path, needed)
        if needed not in table:
            problems.add(where, f"required for a {kind!r} step")
            return _INVALID
        values[needed] = _step_field(kind, table[needed], where, context, problems)
        if values[needed] is _INVALID:
            return _INVALID
    return FallbackStep(kind=cast("FallbackKind", kind), **values) if ok else _INVALID


def _steps(value: Any, path: str, context: _StepContext, problems: _Problems) -> Any:
    """A route's steps, in order; none may follow a canned reply, which always answers."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        problems.add(path, f"must be a list of step tables, got {_show(value)}")
        return _INVALID
    steps: list[FallbackStep] = []
    ok = True
    canned_at: int | None = None
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        if canned_at is not None:
            problems.add(where, f"unreachable: {path}[{canned_at}] is a canned reply, which always answers")
            ok = False
            continue
        step = _step(raw, where, context, problems)
        if step is _INVALID:
            ok = False
            continue
        if step.kind == "canned":
            canned_at = index
        steps.append(step)
    return tuple(steps) if ok else _INVALID


def _route(
    key: str, data: Any, path: str, targets: frozenset[str] | None, problems: _Problems, *, code: bool
) -> Any:
    """The fallback chain for one model (or ``"*"``)."""
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    context = _StepContext(key, targets, code=code)

    def context_model(value: Any, where: str, found: _Problems) -> Any:
        if _text(value, where, found) is _INVALID:
            return _INVALID
        if value == key:
            found.add(where, f"is the route's own model {value!r}; name a model with a larger context window")
            return _INVALID
        return value

    checkers: dict[str, _Checker] = {
        "steps": lambda value, where, found: _steps(value, where, context, found),
        "context_model": _optional(context_model),
        "content_policy": _optional(lambda value, where, found: _step(value, where, context, found)),
    }
    good, bad = _fields(table, path, checkers, problems)
    return Route(**good) if not bad else _INVALID


def _routes(data: Any, path: str, targets: frozenset[str] | None, problems: _Problems, *, code: bool) -> Any:
    """Fallback routes by model name."""
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    routes: dict[str, Route] = {}
    for key, raw in table.items():
        route = _route(key, raw, _child(path, key), targets, problems, code=code)
        if route is not _INVALID:
            routes[key] = route
    return routes


def _forced_failures(data: Any, path: str, problems: _Problems) -> Any:
    """Chaos switch: model or target name -> the failure verdict to fake for it."""
    table = _table(data, path, problems)
    if table is None:
        return _INVALID
    forced: dict[str, Verdict] = {}
    for name, raw in table.items():
        where = _child(path, name)
        verdict = _verdict(raw, where, _FORCEABLE, "is not a failure", problems)
        if verdict is not _INVALID:
            forced[name] = verdict
    return forced


def _fallback(
    data: Any, path: str, retry: RetryPolicy, breaker: BreakerPolicy, problems: _Problems, *, code: bool
) -> FallbackPolicy:
    """The fallback section; steps may only name targets this same section defines.

    ``code``: the section describes a policy built in code (see :func:`check_policy`).
    """
    raw_targets = data.get("targets", {}) if isinstance(data, Mapping) else {}
    # Names only, so a route referring to a target that has its own mistakes is not reported twice.
    targets = (
        frozenset(k for k in raw_targets if isinstance(k, str)) if isinstance(raw_targets, Mapping) else None
    )
    checkers: dict[str, _Checker] = {
        "targets": lambda value, where, found: _targets(value, where, retry, breaker, found, code=code),
        "routes": lambda value, where, found: _routes(value, where, targets, found, code=code),
        "continuation": _flag,
        "forced_failures": _forced_failures,
    }
    return _section(data, path, FallbackPolicy(), checkers, problems)


# --------------------------------------------------------------------------------------------
# The whole policy
# --------------------------------------------------------------------------------------------


def _clock_override(value: Any, path: str, problems: _Problems) -> Any:
    """Check a clock given in code."""
    if not isinstance(value, Clock):
        problems.add(path, f"must be a Clock (now, wall, sleep, asleep), got {_show(value)}")
        return _INVALID
    return value


def _listeners_override(value: Any, path: str, problems: _Problems) -> Any:
    """Check listeners given in code: an iterable of callables, kept as a tuple."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        problems.add(path, f"must be an iterable of callables, got {_show(value)}")
        return _INVALID
    listeners = tuple(value)
    for index, listener in enumerate(listeners):
        if not callable(listener):
            problems.add(f"{path}[{index}]", f"must be callable, got {_show(listener)}")
            return _INVALID
    return listeners


_OVERRIDES: Final[Mapping[str, _Checker]] = {"clock": _clock_override, "listeners": _listeners_override}
_SECTIONS: Final = ("retry", "timeouts", "breaker", "fallback", "cache", "validation")


def _sections(table: Mapping[str, Any], problems: _Problems, *, code: bool) -> dict[str, Any]:
    """Every section of ``table`` checked and built, by field name, in file order.

    ``code``: ``table`` describes a policy built in code (see :func:`check_policy`).
    """
    retry = _retry(table.get("retry", _UNSET), "retry", RetryPolicy(), problems)
    timeouts = _timeouts(table.get("timeouts", _UNSET), "timeouts", problems)
    breaker = _breaker(table.get("breaker", _UNSET), "breaker", BreakerPolicy(), problems)
    fallback = _fallback(table.get("fallback", _UNSET), "fallback", retry, breaker, problems, code=code)
    cache = _cache(table.get("cache", _UNSET), "cache", problems)
    validation = _validation(table.get("validation", _UNSET), "validation", problems)
    return {
        "retry": retry,
        "timeouts": timeouts,
        "breaker": breaker,
        "fallback": fallback,
        "cache": cache,
        "validation": validation,
    }


def _placeholder(key: str, value: Any, problems: _Problems) -> None:
    """Accept what :func:`describe_policy` writes for a code-only field; refuse anything else."""
    if value == CODE_PLACEHOLDER or (
        key == "listeners" and isinstance(value, list) and all(item == CODE_PLACEHOLDER for item in value)
    ):
        return
    problems.add(
        key,
        f"code-only; pass {key}=... to Policy.from_file / Policy.from_dict "
        f"({CODE_PLACEHOLDER!r} here is only describe_policy's placeholder)",
    )


def policy_from_dict(data: Mapping[str, Any], **overrides: Any) -> Policy:
    """Build a :class:`Policy` from plain data, or raise one :class:`ConfigError` listing every mistake.

    ``overrides`` set the code-only fields (``clock``, ``listeners``); they are checked too.
    """
    problems = _Problems()
    table = _table(data, "", problems) or {}
    for key, value in table.items():
        if key in _OVERRIDES:
            _placeholder(key, value, problems)
        elif key not in _SECTIONS:
            _unknown(key, key, [*_SECTIONS, *_OVERRIDES], problems)
    sections = _sections(table, problems, code=False)
    code: dict[str, Any] = {}
    for key, value in overrides.items():
        where = f"override {key}"
        checker = _OVERRIDES.get(key)
        if checker is None:
            problems.add(
                where,
                f"unknown override; allowed: {', '.join(_OVERRIDES)} (everything else goes in the data)",
            )
            continue
        checked = checker(value, where, problems)
        if checked is not _INVALID:
            code[key] = checked
    if problems.lines:
        raise ConfigError(problems.lines)
    return Policy(**sections, **code)


# --------------------------------------------------------------------------------------------
# Checking a policy built in code
# --------------------------------------------------------------------------------------------


def _breaker_key(value: Any, path: str, problems: _Problems) -> Any:
    """Check the code-only function naming breakers, or None for the default."""
    if value is not None and not callable(value):
        problems.add(path, f"must be None or callable as breaker_key(base_url, model), got {_show(value)}")
        return _INVALID
    return value


#: Fields of a Policy that only code can set, each with its checker (a file's overrides, plus one).
_CODE_ONLY: Final[Mapping[str, _Checker]] = {**_OVERRIDES, "breaker_key": _breaker_key}
_SECTION_TYPES: Final[Mapping[str, type]] = {
    "retry": RetryPolicy,
    "timeouts": Timeouts,
    "breaker": BreakerPolicy,
    "fallback": FallbackPolicy,
    "cache": CachePolicy,
    "validation": ValidationPolicy,
}
_COLLECTION: Final = (frozenset, set, tuple, list)


def _is(value: Any, kind: type | tuple[type, ...], what: str, path: str, problems: _Problems) -> bool:
    """Whether ``value`` is a ``kind``; reported as "must be ``what``" when it is not."""
    if isinstance(value, kind):
        return True
    problems.add(path, f"must be {what}, got {_show(value)}")
    return False


def _entry(path: str, key: object) -> str:
    """The path of an entry of a mapping; a key that is no name is shown as an index (and refused later)."""
    return _child(path, key) if isinstance(key, str) and key else f"{path}[{key!r}]"


def _retry_shape(retry: RetryPolicy, path: str, problems: _Problems) -> bool:
    """Whether a retry policy's rules are a mapping of RetryRule values."""
    where = _child(path, "rules")
    if not _is(retry.rules, Mapping, "a mapping of Verdict to RetryRule", where, problems):
        return False
    return all(
        [
            _is(rule, RetryRule, "a RetryRule", _entry(where, _name(verdict)), problems)
            for verdict, rule in retry.rules.items()
        ]
    )


def _breaker_shape(breaker: BreakerPolicy, path: str, problems: _Problems) -> bool:
    """Whether a breaker policy's failure verdicts are a collection (the checker reads each one)."""
    verdicts = breaker.failure_verdicts
    return _is(verdicts, _COLLECTION, "a frozenset of Verdict", _child(path, "failure_verdicts"), problems)


def _target_shape(target: Any, path: str, problems: _Problems) -> bool:
    """Whether a target is a Target whose own retry / breaker policies (if any) have their classes."""
    if not _is(target, Target, "a Target", path, problems):
        return False
    retry, breaker = _child(path, "retry"), _child(path, "breaker")
    retry_ok = target.retry is None or (
        _is(target.retry, RetryPolicy, "a RetryPolicy or None", retry, problems)
        and _retry_shape(target.retry, retry, problems)
    )
    breaker_ok = target.breaker is None or (
        _is(target.breaker, BreakerPolicy, "a BreakerPolicy or None", breaker, problems)
        and _breaker_shape(target.breaker, breaker, problems)
    )
    return retry_ok and breaker_ok


def _route_shape(route: Any, path: str, problems: _Problems) -> bool:
    """Whether a route is a Route with a sequence of FallbackStep and an optional content policy step."""
    if not _is(route, Route, "a Route", path, problems):
        return False
    ok = True
    steps = _child(path, "steps")
    if _is(route.steps, (tuple, list), "a tuple of FallbackStep", steps, problems):
        for index, step in enumerate(route.steps):
            ok = _is(step, FallbackStep, "a FallbackStep", f"{steps}[{index}]", problems) and ok
    else:
        ok = False
    if route.content_policy is not None:
        where = _child(path, "content_policy")
        ok = _is(route.content_policy, FallbackStep, "a FallbackStep or None", where, problems) and ok
    return ok


def _shapes(policy: Policy, problems: _Problems) -> bool:
    """Whether every part of a code-built policy has its class, so it can be described as data.

    Only code can get this wrong (a file always builds the right classes); values are the section
    checkers' business.
    """
    if not all(
        [
            _is(getattr(policy, key), kind, f"a {kind.__name__}", key, problems)
            for key, kind in _SECTION_TYPES.items()
        ]
    ):
        return False
    fallback, validation = policy.fallback, policy.validation
    checks = [
        _retry_shape(policy.retry, "retry", problems),
        _breaker_shape(policy.breaker, "breaker", problems),
        _is(
            validation.context_windows,
            Mapping,
            "a mapping of model prefix to tokens",
            "validation.context_windows",
            problems,
        ),
        _is(
            fallback.forced_failures,
            Mapping,
            "a mapping of model or target name to Verdict",
            "fallback.forced_failures",
            problems,
        ),
    ]
    for field, shape in (("targets", _target_shape), ("routes", _route_shape)):
        where = _child("fallback", field)
        items = getattr(fallback, field)
        kind = "Target" if field == "targets" else "Route"
        if _is(items, Mapping, f"a mapping of name to {kind}", where, problems):
            checks += [shape(item, _entry(where, key), problems) for key, item in items.items()]
        else:
            checks.append(False)
    return all(checks)


def _changed(data: Any, base: Any) -> Any:
    """``data`` without what equals ``base``, table by table: what a file would have had to set.

    The section checkers blame a broken ``low <= high`` pair on the key the data set; leaving out
    the values a code-built policy shares with the file's starting point keeps that blame where a
    file would put it (``Timeouts(connect=40)`` names ``timeouts.connect``, not ``attempt``).
    """
    if not isinstance(data, dict) or not isinstance(base, dict):
        return data
    return {
        key: _changed(value, base[key]) if key in base else value
        for key, value in data.items()
        if key not in base or not _same(value, base[key])
    }


def _same(value: Any, base: Any) -> bool:
    """Equal and of the same type all the way down: ``1`` is not ``True``, nor ``5.0`` ``5``."""
    if isinstance(value, dict) and isinstance(base, dict):
        return value.keys() == base.keys() and all(_same(value[key], base[key]) for key in value)
    if isinstance(value, list) and isinstance(base, list):
        return len(value) == len(base) and all(map(_same, value, base))
    return type(value) is type(base) and bool(value == base)


def check_policy(policy: Policy) -> None:
    """Check a :class:`Policy` built in code with the file rules; raise one ConfigError listing every mistake.

    The policy is described as the data a file would hold (code-only objects kept as themselves,
    not as :func:`describe_policy`'s placeholder) and run through the same section checkers as
    :func:`policy_from_dict`, so each message names the same dotted key and allowed values. Code
    adds what a file cannot express: every part must have its class, a ``function`` step needs a
    callable (and is allowed, unlike in a file), a target's ``name`` must be its key, a target's
    ``client`` must be an OpenAI client and may not come with the settings that would build one,
    and ``clock``, ``listeners`` and ``breaker_key`` are checked as the overrides are. Whether a
    target's client is sync or async like the wrapped one is checked by ``resilient()``.
    """
    problems = _Problems()
    if not isinstance(policy, Policy):
        raise ConfigError([f"(top level): must be a Policy, got {_show(policy)}"])
    if _shapes(policy, problems):
        data = _describe_sections(policy, code=True)
        base = _describe_sections(Policy(), code=True)
        table = {key: _changed(data[key], base[key]) for key in _SECTIONS}
        # A target's own retry / breaker section starts from the top-level one, as in a file,
        # whose rules start from the default ones.
        top = {
            "retry": {**data["retry"], "rules": {**base["retry"]["rules"], **data["retry"]["rules"]}},
            "breaker": data["breaker"],
        }
        for target in table["fallback"].get("targets", {}).values():
            for key, start in top.items():
                target[key] = _changed(target[key], start)
        _sections(table, problems, code=True)
    for key, checker in _CODE_ONLY.items():
        checker(getattr(policy, key), key, problems)
    if problems.lines:
        raise ConfigError(problems.lines)


# --------------------------------------------------------------------------------------------
# Describing a policy
# --------------------------------------------------------------------------------------------


def _flat(obj: DataclassInstance) -> dict[str, Any]:
    """A dataclass with scalar fields as a dict."""
    return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}


def _name(verdict: Any) -> Any:
    """A verdict's name; anything else (a code-built policy's mistake) as it is, for a checker to refuse."""
    return verdict.value if isinstance(verdict, Verdict) else verdict


def _describe_retry(retry: RetryPolicy) -> dict[str, Any]:
    """A retry policy as plain data, rules sorted by verdict name."""
    rules = sorted(retry.rules.items(), key=lambda item: str(_name(item[0])))
    return {
        "rules": {_name(verdict): _flat(rule) for verdict, rule in rules},
        "max_retry_after": retry.max_retry_after,
        "honor_should_retry": retry.honor_should_retry,
        "max_open_wait": retry.max_open_wait,
    }


def _describe_breaker(breaker: BreakerPolicy) -> dict[str, Any]:
    """A breaker policy as plain data, failure verdicts as a sorted list of names."""
    plain = _flat(breaker)
    plain["failure_verdicts"] = sorted((_name(verdict) for verdict in breaker.failure_verdicts), key=str)
    return plain


def _describe_step(step: FallbackStep, *, code: bool) -> dict[str, Any]:
    """A step as its kind plus the fields it sets; a function shows as the code placeholder.

    ``code`` (for :func:`check_policy`) keeps the function itself, to be checked.
    """
    plain: dict[str, Any] = {"kind": step.kind}
    for name in ("model", "target", "text"):
        if getattr(step, name) is not None:
            plain[name] = getattr(step, name)
    if step.function is not None:
        plain["function"] = step.function if code else CODE_PLACEHOLDER
    return plain


def _describe_target(target: Target, *, code: bool) -> dict[str, Any]:
    """A target as plain data: the key's variable name, never the key; a client as the placeholder.

    ``code`` (for :func:`check_policy`) adds the target's ``name`` and keeps the client itself.
    """
    plain: dict[str, Any] = {"name": target.name} if code else {}
    plain.update(
        {
            "base_url": target.base_url,
            "api_key_env": target.api_key_env,
            "organization": target.organization,
            "project": target.project,
            "model": target.model,
            "accepts_prefill": target.accepts_prefill,
            "retry": None if target.retry is None else _describe_retry(target.retry),
            "breaker": None if target.breaker is None else _describe_breaker(target.breaker),
        }
    )
    if target.client is not None:
        plain["client"] = target.client if code else CODE_PLACEHOLDER
    return plain


def _describe_sections(policy: Policy, *, code: bool) -> dict[str, Any]:
    """The sections a file can hold, as that file's data (see :func:`describe_policy`)."""
    fallback = policy.fallback
    return {
        "retry": _describe_retry(policy.retry),
        "timeouts": _flat(policy.timeouts),
        "breaker": _describe_breaker(policy.breaker),
        "fallback": {
            "routes": {
                key: {
                    "steps": [_describe_step(step, code=code) for step in route.steps],
                    "context_model": route.context_model,
                    "content_policy": None
                    if route.content_policy is None
                    else _describe_step(route.content_policy, code=code),
                }
                for key, route in fallback.routes.items()
            },
            "targets": {
                name: _describe_target(target, code=code) for name, target in fallback.targets.items()
            },
            "continuation": fallback.continuation,
            "forced_failures": {name: _name(verdict) for name, verdict in fallback.forced_failures.items()},
        },
        "cache": _flat(policy.cache),
        "validation": {
            "enabled": policy.validation.enabled,
            "context_windows": dict(policy.validation.context_windows),
        },
    }


def describe_policy(policy: Policy) -> dict[str, Any]:
    """The effective policy as JSON-serializable data, for ``config check`` output and logs.

    Everything a file can express round-trips: ``policy_from_dict(describe_policy(p), clock=p.clock,
    listeners=p.listeners) == p``. Code-only objects (clock, listeners, clients, function steps)
    show as ``"<code>"``; targets show the *name* of their key's variable, never a key. Retry rule
    sets lacking some retryable verdict do not round-trip (a file's rules merge over the defaults;
    write ``attempts = 1`` to turn a verdict's retries off).
    """
    return {
        **_describe_sections(policy, code=False),
        "clock": CODE_PLACEHOLDER,
        "listeners": [CODE_PLACEHOLDER for _ in policy.listeners],
    }
