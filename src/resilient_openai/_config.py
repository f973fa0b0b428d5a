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
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pydantic

from ._errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic_core import ErrorDetails

__all__ = ["Loc", "Problems", "load_file", "path_of", "show", "validated"]

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
_CODE_ONLY: Final[Mapping[str, str]] = {
    "clock": "clock",
    "listeners": "listeners",
    "breaker_key": "breaker_key",
    "client": "clients",
}

#: True while a model is validated inside another one (only the outermost reports).
_nested: ContextVar[bool] = ContextVar("resilient_openai_nested_validation", default=False)


class Problems(ValueError):
    """Mistakes a model's own cross-field checks found, each at a path below the model."""

    def __init__(self, found: Sequence[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in found))
        self.found = tuple(found)


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
# Validating, with our messages
# --------------------------------------------------------------------------------------------


def validated(root: type[pydantic.BaseModel], validate: Callable[[], _T]) -> _T:
    """Run ``validate`` (which builds a ``root``); the outermost build turns errors into ConfigError.

    A model built inside another one lets pydantic's error through, so the outer build reports
    every mistake once, at its full path. The ConfigError is raised outside the ``except`` block:
    pydantic's text, which repeats inputs, must not ride along as its context.
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


def _lines(root: type[pydantic.BaseModel], error: ErrorDetails) -> list[str]:
    """The message lines for one pydantic error (a model check may report several)."""
    loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Problems):
        return [f"{path_of(loc + sub)}: {message}" for sub, message in cause.found]
    return [f"{path_of(loc)}: {_message(root, loc, error)}"]


def show(value: object, key: str | int | None = None) -> str:
    """A value for a message: repeated only when it cannot be a secret, else described by type."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str) and key not in _SECRET_KEYS and _SHOWABLE.fullmatch(value):
        return repr(value)
    return f"a {type(value).__name__} (not shown)"


def _message(root: type[pydantic.BaseModel], loc: Loc, error: ErrorDetails) -> str:
    """What is wrong at ``loc``, and what is allowed, from one pydantic error."""
    kind = error["type"]
    key = loc[-1] if loc else None
    got = show(error["input"], next((part for part in reversed(loc) if isinstance(part, str)), None))
    ctx = error.get("ctx", {})
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "extra_forbidden":
        return _unknown(root, loc)
    if key == "[key]":
        return f"keys must be non-empty strings, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return f"must be a table, got {got}"
    if kind in ("tuple_type", "list_type", "frozen_set_type", "set_type", "iterable_type"):
        return f"must be a list, got {got}"
    if kind == "literal_error":
        return f"must be one of {str(ctx['expected']).replace(' or ', ', ')}, got {got}"
    if kind == "missing":
        allowed = _allowed_values(root, loc)
        return "required" + (f"; one of {allowed}" if allowed else "")
    described = _describe(root, loc, upper=kind == "less_than_equal")
    if described is None:
        return f"{error['msg'].lower().removeprefix('input ')}, got {got}"
    finite = " (not a finite number)" if kind == "finite_number" else ""
    return f"must be {described}, got {got}{finite}"


def _unknown(root: type[pydantic.BaseModel], loc: Loc) -> str:
    """An unknown key: what it should be instead (never its value), with a did-you-mean."""
    key = str(loc[-1])
    if key == "api_key":
        return SECRET_MESSAGE
    if key in _CODE_ONLY:
        return f"code-only: pass {_CODE_ONLY[key]}=... to resilient() instead"
    found = _annotation_at(root, loc[:-1])
    model = found[0] if found else None
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
        return "unknown key"
    allowed = sorted(model.model_fields)
    guess = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"unknown key; allowed: {', '.join(allowed)}{hint}"


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``annotation`` without ``Annotated`` and ``| None``, and the metadata it carried."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            metadata += annotation.__metadata__
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        else:
            return annotation, metadata


def _annotation_at(root: type[pydantic.BaseModel], loc: Loc) -> tuple[Any, list[Any]] | None:
    """The annotation (and its constraints) of the value at ``loc`` below ``root``."""
    annotation: Any = root
    metadata: list[Any] = []
    for part in loc:
        annotation, _ = _unwrap(annotation)
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation, metadata = field.annotation, list(field.metadata)
        elif args:  # a mapping (by key: the value), a tuple or a set (by index: the item)
            annotation, metadata = (args[0] if typing.get_origin(annotation) is tuple else args[-1]), []
        else:
            return None
    annotation, more = _unwrap(annotation)
    return annotation, metadata + more


def _bounds(metadata: list[Any]) -> dict[str, float]:
    """The ``ge`` / ``gt`` / ``le`` constraints among ``metadata`` (inner Field()s included)."""
    bounds: dict[str, float] = {}
    for item in metadata:
        if isinstance(item, pydantic.fields.FieldInfo):
            bounds.update(_bounds(list(item.metadata)))
        for name in ("ge", "gt", "le"):
            value = getattr(item, name, None)
            if isinstance(value, int | float):
                bounds[name] = value
    return bounds


def _number(value: float) -> str:
    """``1.0`` -> ``1``, ``0.5`` -> ``0.5``: bounds as people write them."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _describe(root: type[pydantic.BaseModel], loc: Loc, *, upper: bool) -> str | None:
    """What a scalar at ``loc`` may be: its type and the bound that matters (``upper``: the top)."""
    found = _annotation_at(root, loc)
    if found is None:
        return None
    annotation, metadata = found
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a non-empty string"
    if annotation not in (int, float):
        return None
    what = "an integer" if annotation is int else "a number"
    bounds = _bounds(metadata)
    low = ("gt", "(", ">") if "gt" in bounds else ("ge", "[", ">=")
    if bounds.get("le", 2) <= 1 and low[0] in bounds:
        return f"{what} in {low[1]}{_number(bounds[low[0]])}, {_number(bounds['le'])}]"
    if upper and "le" in bounds:
        return f"{what} <= {_number(bounds['le'])}"
    if low[0] in bounds:
        return f"{what} {low[2]} {_number(bounds[low[0]])}"
    return what


def _allowed_values(root: type[pydantic.BaseModel], loc: Loc) -> str | None:
    """The allowed values of a required ``Literal`` field, as ``'a', 'b'``."""
    found = _annotation_at(root, loc)
    if found is None or typing.get_origin(found[0]) is not typing.Literal:
        return None
    return ", ".join(repr(value) for value in typing.get_args(found[0]))
