"""What the chain should do: retry rules, timeouts, breakers, fallbacks, cache, validation.

A :class:`Policy` is a tree of frozen pydantic models, so an invalid policy cannot exist: types
are strict (``5.0`` is no count, ``1`` no boolean), numbers finite and bounded, extra keys
refused, and a setting that would make another one dead is refused too (an inner time limit
longer than its outer one, a backoff base above its cap, a fallback step after a canned reply, a
fallback to the route's own model). Build it in code, or load it with :meth:`Policy.from_dict` /
:meth:`Policy.from_file`; either way a mistake raises one :class:`~resilient_openai.ConfigError`
listing every problem (see :mod:`._config` for the file format and the messages). Code — clock,
listeners, clients, fallback functions — is no part of a policy: it goes to
:func:`~resilient_openai.resilient` as keyword arguments.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import urlsplit

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, Strict, field_serializer

from ._classify import Verdict, verdicts_where
from ._config import SECRET_MESSAGE, Loc, load_file, path_of, show
from ._errors import ConfigError
from ._fields import (
    RETRYABLE_VERDICTS,
    BreakerVerdict,
    Count,
    Flag,
    ForceableVerdict,
    Fraction,
    Key,
    Model,
    Name,
    PerSecond,
    Ratio,
    RetryableVerdict,
    Seconds,
    Text,
    Wait,
    must_be,
    ordered,
    refuse,
)

__all__ = [
    "BreakerPolicy", "CachePolicy", "CannedToolCall", "FallbackPolicy", "FallbackStep", "Policy",
    "RetryBudget", "RetryPolicy", "RetryRule", "Route", "SharedPolicy", "Target", "Timeouts",
    "ValidationPolicy",
]  # fmt: skip


class RetryRule(Model):
    """How one verdict is retried: total ``attempts`` (>= 1) and exponential backoff.

    The n-th retry waits ``min(base * 2**(n-1), cap)``, reduced by a random fraction of up to
    ``jitter`` (the SDK's own shape: 0.5 s doubling to 8 s, minus up to 25 %).
    """

    attempts: Count = 3
    base: Wait = 0.5
    cap: Wait = 8.0
    jitter: Fraction = 0.25

    @pydantic.model_validator(mode="after")
    def _base_within_cap(self) -> Self:
        return ordered(self, [("base", "cap")], "cap is the longest wait")


class RetryBudget(Model):
    """How many retries one target may get: a share of its recent requests, plus a small floor.

    Over the last ``window`` seconds a target may be retried ``ratio`` times as often as it was
    first asked, plus ``min_per_second * window`` times whatever its traffic (so a lone caller's
    transient failure is still retried). Past that, a failure that would have been retried is
    the target's answer: the fallback walk moves on, or the caller gets it. In a brownout every
    caller's retries would otherwise multiply the load on a struggling upstream (Finagle's and
    Envoy's retry budgets, for the same reason). One budget per target, kept for as many targets
    as ``breaker.max_breakers``; a target's own ``retry.budget`` applies to that target.
    """

    enabled: Flag = True
    #: Retries allowed per first attempt over the window (0.2: at most 20 % extra load).
    ratio: Fraction = 0.2
    #: The sliding window, in seconds (kept in ten buckets of ``window / 10``).
    window: Seconds = 10.0
    #: The floor: this many retries per second are allowed whatever the traffic.
    min_per_second: PerSecond = 1.0

    @pydantic.model_validator(mode="after")
    def _some_retry(self) -> Self:
        if self.enabled and self.ratio == 0 and self.min_per_second == 0:
            message = "must be > 0 when ratio is 0, or no retry could ever be made"
            message += " (to turn the budget off, set enabled = false)"
            refuse([(("min_per_second",), message)])
        return self


class RetryPolicy(Model):
    """Per-verdict retry rules, how far to trust the server's own advice, and the retry budget."""

    rules: Mapping[RetryableVerdict, RetryRule] = Field(
        default_factory=lambda: {verdict: RetryRule() for verdict in sorted(RETRYABLE_VERDICTS)}
    )
    #: A server-requested wait longer than this (seconds) means "give up on this target now".
    max_retry_after: Wait = 120.0
    #: Obey ``x-should-retry: true|false`` from the upstream.
    honor_should_retry: Flag = True
    #: Opt-in: with no fallback left, wait out an open circuit once when its ``retry_after`` is at
    #: most this many seconds (and fits the deadline). 0 (the default) never waits: an open
    #: circuit answers at once with :class:`~resilient_openai.CircuitOpenError`, freeing the
    #: caller's thread and connection exactly when the upstream is failing.
    max_open_wait: Wait = 0.0
    #: How many retries a target may get, as a share of its recent requests.
    budget: RetryBudget = Field(default_factory=RetryBudget)

    @field_serializer("rules")
    def _rules_by_name(self, rules: Mapping[Verdict, RetryRule]) -> dict[str, RetryRule]:
        return {verdict.value: rules[verdict] for verdict in sorted(rules)}


class Timeouts(Model):
    """Time limits, in seconds.

    ``total`` bounds one call end to end, fallbacks included. ``attempt`` bounds every wait on
    the network within one attempt (connect, each read). For streams, ``first_token`` bounds the
    wait for the response and ``stream_idle`` every later wait between events.
    """

    total: Seconds = 60.0
    attempt: Seconds = 30.0
    connect: Annotated[float, Strict(), Field(gt=0, le=3600), must_be("a number > 0", "a number <= 3600")] = (
        5.0
    )
    first_token: Seconds = 30.0
    stream_idle: Seconds = 20.0

    @pydantic.model_validator(mode="after")
    def _inner_within_outer(self) -> Self:
        pairs = [
            ("connect", "attempt"),
            ("attempt", "total"),
            ("first_token", "total"),
            ("stream_idle", "total"),
        ]
        return ordered(self, pairs, "a limit longer than the one bounding it could never fire")


def _some_verdict(verdicts: frozenset[Verdict]) -> frozenset[Verdict]:
    if not verdicts:
        raise ValueError("must name at least one verdict (to turn the breaker off, set enabled = false)")
    return verdicts


class BreakerPolicy(Model):
    """When a target's circuit opens, how long it stays open, and how it closes again."""

    enabled: Flag = True
    mode: Literal["consecutive", "ratio"] = "consecutive"
    #: consecutive mode: this many failures in a row open the circuit.
    fail_max: Count = 5
    #: ratio mode: open when failures / calls >= failure_ratio over the last ``window`` seconds,
    #: once at least ``min_calls`` calls were recorded in it.
    failure_ratio: Ratio = 0.5
    window: Seconds = 30.0
    min_calls: Count = 10
    #: Slow-call tripping (off when None): open when the share of calls slower than
    #: ``slow_call_threshold`` seconds reaches ``slow_call_ratio`` (with ``min_calls``).
    slow_call_threshold: Seconds | None = None
    slow_call_ratio: Ratio = 1.0
    #: First open period; each reopening multiplies it by ``break_multiplier`` up to ``break_max``.
    #: ``break_max`` (default 20 s, or ``break_duration`` when that is set longer) is also the
    #: recovery bound: once the upstream is healthy again, the next call
    #: after at most ``break_max`` seconds is the probe that closes the circuit. A server's
    #: Retry-After may lengthen a break, never past it.
    break_duration: Seconds = 5.0
    break_multiplier: Annotated[
        float, Strict(), Field(ge=1, le=1000), must_be("a number >= 1", "a number <= 1000")
    ] = 2.0
    break_max: Seconds = 20.0
    #: Half-open: at most this many probes in flight; this many successes close the circuit.
    half_open_probes: Count = 1
    close_after: Count = 1
    #: A probe that has not reported after this many seconds frees its slot.
    probe_lease: Seconds = 60.0
    #: Verdicts that count as failures. Everything else that is not a success is ignored.
    failure_verdicts: Annotated[frozenset[BreakerVerdict], AfterValidator(_some_verdict)] = Field(
        default_factory=lambda: verdicts_where("breaker_failure")
    )
    #: Quota exhaustion refuses that credential (not the target) for this long (0 disables).
    quota_break: Wait = 600.0
    #: Most breakers kept (least recently used are dropped when closed).
    max_breakers: Count = 1024

    @field_serializer("failure_verdicts")
    def _sorted_verdicts(self, verdicts: frozenset[Verdict]) -> list[str]:
        return sorted(verdict.value for verdict in verdicts)

    @pydantic.model_validator(mode="after")
    def _break_within_max(self) -> Self:
        if "break_max" not in self.model_fields_set and self.break_duration > self.break_max:
            # A longer first break given alone raises the (default) cap with it.
            object.__setattr__(self, "break_max", self.break_duration)
        return ordered(self, [("break_duration", "break_max")], "break_max caps every open period")


def _http_url(value: str) -> str:
    """An http(s) URL with a host; one carrying credentials is refused without echoing it."""
    try:
        parts = urlsplit(value)
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError:
        raise ValueError("must be an http(s) URL such as 'https://example.com/v1'") from None
    if has_credentials:
        raise ValueError(f"must not carry credentials (not shown); {SECRET_MESSAGE}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as 'https://example.com/v1'")
    return value


def _set_variable(value: str) -> str:
    """The name of an environment variable that is set now; neither name nor value is shown.

    Someone may have pasted the key itself here, so the message describes it without printing it.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(
            "must be the name of an environment variable (letters, digits, _), "
            "got a string that is not one (not shown, in case it is a key)"
        )
    current = os.environ.get(value)
    if current is None:
        raise ValueError(
            "names an environment variable that is not set (this target's API key is read from it; "
            "the name is not shown, in case it is a key)"
        )
    if not current.strip():
        raise ValueError("names an environment variable that is set but empty (this target's API key)")
    return value


class Target(Model):
    """Another client to fall back to: a provider, region, or local OpenAI-compatible server.

    Built from ``base_url``, with the key read from the environment variable named by
    ``api_key_env`` (a policy never holds secrets) — or, with neither, from the ready client
    passed as ``resilient(..., clients={name: client})``.
    """

    #: Its key in ``fallback.targets`` (a file never writes it, so a dump leaves it out too).
    name: Key = Field(exclude=True)
    base_url: Annotated[Text, AfterValidator(_http_url)] | None = None
    api_key_env: Annotated[Text, AfterValidator(_set_variable)] | None = None
    organization: Name | None = None
    project: Name | None = None
    #: Model to ask there (None: the caller's model).
    model: Name | None = None
    #: The target accepts a trailing assistant message as a prefill to continue from.
    accepts_prefill: Flag = False
    retry: RetryPolicy | None = None
    breaker: BreakerPolicy | None = None

    def api_key(self) -> str | None:
        """The key from ``api_key_env``, read now (None when no variable is named)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


#: The one field each kind of step needs besides ``kind`` (a ``cache`` step needs none; a
#: ``canned`` one needs one or more of ``_CANNED_FIELDS``).
_STEP_FIELD: Final = {"model": "model", "target": "target", "function": "function"}
#: What a canned step may answer with: text, a JSON value (structured requests), a tool call.
_CANNED_FIELDS: Final = ("text", "json_value", "tool_call")
#: Every field only some kinds of step use, by attribute, with the key a policy names it by.
_KIND_FIELDS: Final = {
    "model": "model", "target": "target", "text": "text", "json_value": "json", "tool_call": "tool_call",
    "function": "function",
}  # fmt: skip


class CannedToolCall(Model):
    """The tool call a canned step answers a forced tool call with (``tool_choice="required"``
    or a named function): the function's ``name`` and its ``arguments`` (a JSON object)."""

    name: Name
    arguments: dict[str, Any] = Field(default_factory=dict)


def _template(text: str) -> str | None:
    """What is wrong with a canned reply's ``str.format`` template, or None."""
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:
        return f"not a valid template ({exc}); write {{{{ and }}}} for literal braces"
    if others := sorted(used - {"model", "reason"}):
        shown = ", ".join("{" + field + "}" for field in others)
        return f"may only use {{model}} and {{reason}}, got {shown}; write {{{{ and }}}} for literal braces"
    try:  # The reply is formatted with two strings at run time: conversions and specs must fit them.
        text.format(model="model", reason="reason")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        return f"cannot be formatted with {{model}} and {{reason}} ({exc})"
    return None


class FallbackStep(Model):
    """One rung of a fallback chain.

    ``model``: ask ``model`` on the same client. ``target``: ask the :class:`Target` named
    ``target``. ``cache``: the last good answer to the same request. ``canned``: ``text``, a
    ``str.format`` template that may use ``{model}`` and ``{reason}``, answers plain requests;
    ``json`` (a JSON object) answers structured ones (``response_format``, ``parse()``,
    ``text.format``) when it is valid for the request's schema; ``tool_call`` answers a forced
    tool call when it names a function the request offers. ``function``: call the
    function passed as ``resilient(..., functions={name: function})`` under the name
    ``function``, as ``function(request_body, reason)``; it returns the answer text (sync or
    async), or None to decline; for a structured request the text must be JSON that fits its
    schema. A step that cannot answer the request as asked is skipped. ``accepts_prefill``
    (model steps; a target declares it on the :class:`Target`): the model continues a trailing
    assistant message, so a stream cut mid-answer can be continued.
    """

    model_config = ConfigDict(serialize_by_alias=True)

    kind: Literal["model", "target", "cache", "canned", "function"]
    model: Name | None = None
    target: Name | None = None
    text: Name | None = None
    json_value: dict[str, Any] | None = Field(default=None, alias="json")
    tool_call: CannedToolCall | None = None
    function: Name | None = None
    accepts_prefill: Flag = False

    @pydantic.model_validator(mode="after")
    def _fields_of_kind(self) -> Self:
        needed = _STEP_FIELD.get(self.kind)
        own = _CANNED_FIELDS if self.kind == "canned" else () if needed is None else (needed,)
        allowed = ", ".join(["kind", *(_KIND_FIELDS[name] for name in own)])
        found: list[tuple[Loc, str]] = [
            ((key,), f"not used by a {self.kind!r} step; allowed: {allowed}")
            for name, key in _KIND_FIELDS.items()
            if name not in own and getattr(self, name) is not None
        ]
        if needed is not None and getattr(self, needed) is None:
            found.append(((needed,), f"required for a {self.kind!r} step"))
        if self.kind == "canned" and all(getattr(self, name) is None for name in _CANNED_FIELDS):
            found.append((("text",), "required for a 'canned' step, unless it gives json or tool_call"))
        elif self.kind == "canned" and self.text is not None and (wrong := _template(self.text)):
            found.append((("text",), wrong))
        if self.accepts_prefill and self.kind != "model":
            found.append((("accepts_prefill",), "only for 'model' steps (a target declares it itself)"))
        refuse(found)
        return self


class Route(Model):
    """The fallback chain for the models a route matches (a model name, or ``"*"``)."""

    steps: tuple[FallbackStep, ...] = ()
    #: Where ``context_length_exceeded`` goes (a model with a larger window), if anywhere.
    context_model: Name | None = None
    #: What answers a content-filtered request, if anything (default: the filter error).
    content_policy: FallbackStep | None = None

    def located_steps(self) -> list[tuple[Loc, FallbackStep]]:
        """Every step with its key path below the route: ``steps[i]``, then ``content_policy``."""
        located: list[tuple[Loc, FallbackStep]] = [
            (("steps", index), step) for index, step in enumerate(self.steps)
        ]
        if self.content_policy is not None:
            located.append((("content_policy",), self.content_policy))
        return located


class FallbackPolicy(Model):
    """Fallback routes by model name (``"*"`` matches any), alternate targets, continuation."""

    routes: Mapping[Key, Route] = Field(default_factory=dict)
    targets: Mapping[Key, Target] = Field(default_factory=dict)
    #: Rescue a stream that breaks after its first token on the route's next live step: continue
    #: it there with the delivered text as a prefill (steps that accept one), else regenerate
    #: and deliver only what follows the delivered text. Off: the caller gets
    #: :class:`~resilient_openai.IncompleteStreamError` with the partial text at once.
    continuation: Flag = True
    #: Make these models / target names fail on purpose, with this verdict (chaos switch).
    forced_failures: Mapping[Key, ForceableVerdict] = Field(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _routes_fit_targets(self) -> Self:
        defined = ", ".join(sorted(self.targets)) or "none"
        found: list[tuple[Loc, str]] = [
            (("targets", key, "name"), f"must equal its table key in fallback.targets, {key!r}")
            for key, target in self.targets.items()
            if target.name != key
        ]
        for key, route in self.routes.items():
            if route.context_model == key:
                message = f"is the route's own model {key!r}; name a model with a larger context window"
                found.append((("routes", key, "context_model"), message))
            for at, step in route.located_steps():
                if step.kind == "model" and step.model == key:
                    message = f"is the route's own model {key!r}; a fallback must go elsewhere"
                    message += " (retries are set in retry)"
                    found.append((("routes", key, *at, "model"), message))
                if step.kind == "target" and step.target not in self.targets:
                    message = f"unknown target {show(step.target)}; defined targets: {defined}"
                    found.append((("routes", key, *at, "target"), message))
        refuse(found)
        return self


class CachePolicy(Model):
    """The response cache: bounded by entries and bytes, with a TTL, scoped per tenant."""

    enabled: Flag = True
    max_entries: Count = 1024
    max_bytes: Annotated[
        int, Strict(), Field(ge=1, le=2**36), must_be("an integer >= 1", f"an integer <= {2**36}")
    ] = 16 * 1024 * 1024
    ttl: Seconds = 3600.0
    #: Serve a hit before calling the upstream at all (off: the cache only answers outages).
    read_through: Flag = False


class ValidationPolicy(Model):
    """Checks made before sending, so a request that cannot succeed never reaches a breaker."""

    enabled: Flag = True
    #: Context windows in tokens, by model name (prefix match), for the prompt-size estimate.
    context_windows: Mapping[
        Key,
        Annotated[
            int, Strict(), Field(ge=1, le=10**8), must_be("an integer >= 1", "an integer <= 100000000")
        ],
    ] = Field(default_factory=dict)


class SharedPolicy(Model):
    """State shared by every worker through Redis (the ``redis`` extra): breakers and the cache.

    The URL comes from the environment variable ``url_env`` names (or ``url``, which must not
    carry a password: ``password_env`` names the variable holding it); ``rediss://`` for TLS.
    """

    url_env: Name | None = None
    url: Text | None = None
    password_env: Name | None = None
    #: Every key lives under this prefix, so two applications can share one Redis.
    namespace: Name = "resilient-openai"
    #: The longest any call waits on Redis, in seconds.
    timeout: Annotated[float, Strict(), Field(gt=0, le=10), must_be("a number > 0", "a number <= 10")] = 0.05
    #: While Redis cannot be reached: "local" (each worker decides alone), "open" (targets are
    #: treated as open: fallbacks answer), "closed" (calls are admitted).
    on_unavailable: Literal["local", "open", "closed"] = "local"
    #: Share the stale-if-error cache too.
    cache: Flag = True
    #: The variable holding the secret that keys the cache's tenant hash, the same in every
    #: worker (unset: the cache is not shared, each worker keys its own).
    key_secret_env: Name | None = None

    @pydantic.model_validator(mode="after")
    def _one_url(self) -> Self:
        found: list[tuple[Loc, str]] = []
        if (self.url is None) == (self.url_env is None):
            found.append((("url",), "give exactly one of url and url_env"))
        elif self.url is not None and (wrong := _redis_url(self.url)):
            found.append((("url",), wrong))
        refuse(found)
        return self


def _redis_url(value: str) -> str | None:
    """Why ``value`` is not a usable Redis URL (never echoing it: it might hold a password)."""
    try:
        parts = urlsplit(value)
        has_password = parts.password is not None
    except ValueError:
        return "must be a redis:// or rediss:// URL such as 'redis://127.0.0.1:6379/0'"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must be a redis:// or rediss:// URL such as 'redis://127.0.0.1:6379/0'"
    if has_password:
        return "must not carry a password (not shown): name the variable holding it in password_env"
    return None


class Policy(Model):
    """Everything the chain needs, as data a file can hold. ``Policy()`` is a sensible default."""

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    fallback: FallbackPolicy = Field(default_factory=FallbackPolicy)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    #: Shared state through Redis; None (the default): every process keeps its own.
    shared: SharedPolicy | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build and validate a policy from plain data (as read from TOML/YAML/JSON).

        As in a file: ``retry.rules`` merge over the default rules, a target's own ``retry`` /
        ``breaker`` start from the top-level sections, and a target's name is its table key.
        """
        return cls.model_validate(_file_data(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Policy:
        """Load ``path`` (``.toml``; ``.yaml``/``.yml`` with the ``yaml`` extra) and validate it."""
        return cls.from_dict(load_file(Path(path)))


def _string_keys(data: Any, loc: Loc = ()) -> list[str]:
    """A problem for every mapping key in ``data`` that is not a string (YAML allows ``1:``)."""
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, list) else ()
    found: list[str] = []
    for key, value in items:
        if isinstance(data, Mapping) and not isinstance(key, str):
            found.append(f"{path_of(loc)}: keys must be non-empty strings, got {show(key)}")
        else:
            found += _string_keys(value, (*loc, key))
    return found


def _over(base: Mapping[str, Any], section: Any) -> Any:
    """A file's ``section`` over ``base``, its retry rules and budget over the base's (when tables)."""
    if not isinstance(section, Mapping):
        return section
    merged = {**base, **section}
    for key in ("rules", "budget"):
        if isinstance(base.get(key), Mapping) and isinstance(merged[key], Mapping):
            merged[key] = {**base[key], **merged[key]}
    return merged


def _valid(model: type[Model], section: Any) -> dict[str, Any]:
    """The keys a top-level section sets, when it is valid (else nothing: it is reported there)."""
    if not isinstance(section, Mapping):
        return {}
    try:
        model(**section)
    except ConfigError:
        return {}
    return dict(section)


def _target(name: str, target: Any, inherited: Mapping[str, Mapping[str, Any]]) -> Any:
    """A file's target, named by its key, its own retry / breaker over the top-level ones."""
    if not isinstance(target, Mapping):
        return target
    merged = {"name": name, **target}
    for key, base in inherited.items():
        if key in merged:
            merged[key] = _over(base, merged[key])
    return merged


def _file_data(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` with a file's merge rules applied; keys that are no strings raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): must be a table of sections, got {show(data)}"])
    if found := _string_keys(data):
        raise ConfigError(found)
    prepared = dict(data)
    defaults: dict[str, Any] = {"rules": {verdict.value: {} for verdict in sorted(RETRYABLE_VERDICTS)}}
    if "retry" in data:
        prepared["retry"] = _over(defaults, data["retry"])
    inherited = {
        "retry": _valid(RetryPolicy, prepared.get("retry")) or defaults,
        "breaker": _valid(BreakerPolicy, data.get("breaker")),
    }
    fallback = data.get("fallback")
    if isinstance(fallback, Mapping) and isinstance(fallback.get("targets"), Mapping):
        targets = {name: _target(name, target, inherited) for name, target in fallback["targets"].items()}
        prepared["fallback"] = {**fallback, "targets": targets}
    return prepared
