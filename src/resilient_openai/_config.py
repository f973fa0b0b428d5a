"""Policy files and policy messages: read TOML or YAML, and say what is wrong with a policy.

The file mirrors the model tree in :mod:`resilient_openai._policy`; every section and key is
optional and an absent one keeps its default::

    [retry]                      max_retry_after, honor_should_retry, max_open_wait
    [retry.rules.<verdict>]      attempts, base, cap, jitter (merged over the default rule)
    [timeouts]                   total, attempt, connect, first_token, stream_idle
    [breaker]                    enabled, mode, fail_max, failure_ratio, window, min_calls, ...
    [fallback]                   continuation, forced_failures = {<model or target> = <verdict>}
    [fallback.targets.<name>]    base_url, api_key_env, organization, project, model,
                                 accepts_prefill, and optional [retry] / [breaker] of its own
    [fallback.routes.<model>]    steps = [{kind = "model" | "target" | "cache" | "canned" |
                                 "function", ...}], context_model, content_policy (one step);
                                 "*" matches any model
    [cache]                      enabled, max_entries, max_bytes, ttl, read_through
    [validation]                 enabled, context_windows = {<model prefix> = <tokens>}

The checks themselves live in the pydantic models; this module owns what pydantic does not:
reading files, and the message format. Every mistake is one line, ``dotted.key: what is wrong``
with what is allowed, the key path written as in the file (``fallback.routes."*".steps[1].kind``).
A value is repeated only when it cannot be a secret (a number, a boolean, a short name-like
string outside the keys that may hold one); pydantic's own text, which echoes inputs, is never
shown.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pydantic

from ._errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic_core import ErrorDetails

__all__ = ["SECRET_MESSAGE", "Loc", "Problems", "load_file", "path_of", "show", "validated"]

_T = TypeVar("_T")
#: A key path as pydantic gives it: field names, mapping keys and list indices.
Loc = tuple[str | int, ...]

_SUFFIXES: Final = (".toml", ".yaml", ".yml")
SECRET_MESSAGE: Final = (
    "secrets never in the file; use api_key_env (the name of an environment variable holding the key)"
)
#: Keys whose values may be, or carry, a secret: never repeated in a message.
_SECRET_KEYS: Final = frozenset({"api_key", "api_key_env", "base_url", "organization", "project", "text"})
#: Strings short and plain enough to repeat: names, modes, verdicts, '30s'.
_SHOWABLE: Final = re.compile(r"[A-Za-z0-9_.*\-]{0,40}")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
#: What only code can give, and the keyword argument of ``resilient()`` that takes it.
_CODE_ONLY: Final = {
    "clock": "clock",
    "listeners": "listeners",
    "breaker_key": "breaker_key",
    "client": "clients",
}
_TABLE_ERRORS: Final = frozenset({"model_type", "model_attributes_type", "dict_type", "mapping_type"})
_LIST_ERRORS: Final = frozenset({"tuple_type", "list_type", "frozen_set_type", "set_type", "iterable_type"})

#: True while a model is validated inside another one (only the outermost reports).
_nested: ContextVar[bool] = ContextVar("resilient_openai_nested_validation", default=False)


class Problems(ValueError):
    """Mistakes a model's own cross-field checks found, each at a path below the model."""

    def __init__(self, found: Sequence[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in found))
        self.found = tuple(found)


def load_file(path: Path) -> Mapping[str, Any]:
    """Read a policy file into plain data: ``.toml``, or ``.yaml`` / ``.yml`` with PyYAML.

    Every failure (unknown suffix, unreadable file, bad encoding, syntax error with its line and
    column, YAML without PyYAML) is a :class:`ConfigError` naming the file.
    """
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError([f"{path}: unsupported file type {path.suffix!r}; allowed: {', '.join(_SUFFIXES)}"])
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from exc
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)  # its message carries the line and column
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc
    else:
        data = _parse_yaml(path, text)
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: the top level must be a table of sections, got {type(data).__name__}"])
    return data


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
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"{path}: invalid YAML{where}: {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from exc
    return {} if data is None else data


def validated(root: type[pydantic.BaseModel], validate: Callable[[], _T]) -> _T:
    """Run ``validate`` (which builds a ``root``); the outermost build turns errors into ConfigError.

    pydantic builds a nested model through its ``__init__``; that inner build lets pydantic's
    error through, so the outer build reports every mistake once, at its full path. The
    ConfigError is raised outside the ``except`` block: pydantic's text, which repeats inputs,
    must not ride along as its context.
    """
    outermost = not _nested.get()
    token = _nested.set(True)
    try:
        return validate()
    except pydantic.ValidationError as exc:
        if not outermost:
            raise
        problems = [line for error in exc.errors(include_url=False) for line in _lines(root, error)]
    finally:
        _nested.reset(token)
    raise ConfigError(problems)


def path_of(loc: Loc) -> str:
    """``('fallback', 'routes', '*', 'steps', 1)`` -> ``fallback.routes."*".steps[1]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":
            key = (
                part
                if _BARE_KEY.fullmatch(part)
                else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            )
            path = f"{path}.{key}" if path else key
    return path or "(top level)"


def show(value: object, key: str | int | None = None) -> str:
    """A value for a message: repeated only when it cannot be a secret, else described by type."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str) and key not in _SECRET_KEYS and _SHOWABLE.fullmatch(value):
        return repr(value)
    return f"a {type(value).__name__} (not shown)"


def _lines(root: type[pydantic.BaseModel], error: ErrorDetails) -> list[str]:
    """The message lines for one pydantic error (a model's own check may report several)."""
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx", {})
    if isinstance(ctx.get("error"), Problems):
        return [f"{path_of(loc + sub)}: {message}" for sub, message in ctx["error"].found]
    got = show(error["input"], next((part for part in reversed(loc) if isinstance(part, str)), None))
    if kind == "value_error":
        message = str(ctx["error"])
    elif kind == "extra_forbidden":
        message = _unknown(root, loc)
    elif loc[-1:] == ("[key]",):
        message = f"keys must be non-empty strings, got {got}"
    elif kind == "scalar":  # raised by _policy's scalar types, saying what is allowed
        message = f"must be {error['msg']}, got {got}{ctx['note']}"
    elif kind == "missing":
        model = _model_at(root, loc[:-1])
        annotation = model.model_fields[str(loc[-1])].annotation if model else None
        allowed = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
        message = "required" + (f"; one of {', '.join(map(repr, allowed))}" if allowed else "")
    elif kind == "literal_error":
        message = f"must be one of {str(ctx['expected']).replace(' or ', ', ')}, got {got}"
    elif kind in _TABLE_ERRORS:
        message = f"must be a table, got {got}"
    elif kind in _LIST_ERRORS:
        message = f"must be a list, got {got}"
    else:
        message = f"{error['msg'].lower().removeprefix('input ')}, got {got}"
    return [f"{path_of(loc)}: {message}"]


def _unknown(root: type[pydantic.BaseModel], loc: Loc) -> str:
    """An unknown key: what it should be instead (never its value), with a did-you-mean."""
    key = str(loc[-1])
    if key == "api_key":
        return SECRET_MESSAGE
    if key in _CODE_ONLY:
        return f"code-only: pass {_CODE_ONLY[key]}=... to resilient() instead"
    model = _model_at(root, loc[:-1])
    if model is None:
        return "unknown key"
    allowed = sorted(field.alias or name for name, field in model.model_fields.items())
    guess = difflib.get_close_matches(key, allowed, n=1)
    return f"unknown key; allowed: {', '.join(allowed)}" + (f" (did you mean {guess[0]!r}?)" if guess else "")


def _model_at(root: type[pydantic.BaseModel], loc: Loc) -> type[pydantic.BaseModel] | None:
    """The model of the table at ``loc`` below ``root``, or None when ``loc`` leads to no model."""
    model: type[pydantic.BaseModel] | None = root
    parts = iter(loc)
    for part in parts:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            return None
        model = _model_in(field.annotation)
        if typing.get_origin(field.annotation) in (Mapping, tuple):
            next(parts, None)  # the mapping's key or the list's index
    return model


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The model a field holds: itself, when optional, or as a mapping's value or a list's item."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    return next((model for arg in typing.get_args(annotation) if (model := _model_in(arg))), None)
