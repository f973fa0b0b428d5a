"""The field types a policy is made of, and the checks every policy model shares.

Each type says what it accepts in the words a :class:`~resilient_openai.ConfigError` message
uses ("a number > 0"), so pydantic does the checking and ``_config`` only formats.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Self, TypeVar

import pydantic
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

from ._classify import Verdict, verdicts_where
from ._config import Loc, Problems, show, validated

__all__ = [
    "RETRYABLE_VERDICTS",
    "BreakerVerdict",
    "Count",
    "Flag",
    "ForceableVerdict",
    "Fraction",
    "Key",
    "Model",
    "Name",
    "PerSecond",
    "Ratio",
    "RetryableVerdict",
    "Seconds",
    "Text",
    "Wait",
    "must_be",
    "ordered",
    "refuse",
]

_M = TypeVar("_M", bound="Model")

#: The verdicts' traits come from one table (:data:`resilient_openai._classify.TRAITS`).
#: Verdicts a retry rule may be given for; the rest are never retried.
RETRYABLE_VERDICTS = verdicts_where("retryable")
_DAY: Final = 86_400
_MAX_COUNT: Final = 1_000_000


def must_be(allowed: str, above: str | None = None) -> pydantic.WrapValidator:
    """Let pydantic check a scalar, and report any mistake as ``must be <allowed>``, nothing else.

    ``above`` replaces ``allowed`` for a value over the upper bound. The message adds what was
    given (see :mod:`._config`), so pydantic's own text, which echoes inputs, goes nowhere.
    """

    def check(value: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except pydantic.ValidationError as exc:
            kind = exc.errors()[0]["type"]
        note = " (not a finite number)" if kind == "finite_number" else ""
        raise PydanticCustomError(
            "scalar", above if above and kind == "less_than_equal" else allowed, {"note": note}
        )

    return pydantic.WrapValidator(check)


# Scalars: strict (no bool for a number, no 5.0 for a count), finite (model config), bounded.
Seconds = Annotated[float, Strict(), Field(gt=0, le=_DAY), must_be("a number > 0", f"a number <= {_DAY}")]
Wait = Annotated[float, Strict(), Field(ge=0, le=_DAY), must_be("a number >= 0", f"a number <= {_DAY}")]
Count = Annotated[
    int, Strict(), Field(ge=1, le=_MAX_COUNT), must_be("an integer >= 1", f"an integer <= {_MAX_COUNT}")
]
Ratio = Annotated[float, Strict(), Field(gt=0, le=1), must_be("a number in (0, 1]")]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1), must_be("a number in [0, 1]")]
PerSecond = Annotated[
    float, Strict(), Field(ge=0, le=_MAX_COUNT), must_be("a number >= 0", f"a number <= {_MAX_COUNT}")
]
Flag = Annotated[bool, Strict(), must_be("true or false")]
Text = Annotated[str, Strict(), must_be("a non-empty string")]
Key = Annotated[str, Strict(), Field(min_length=1), must_be("a non-empty string")]


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


Name = Annotated[Text, AfterValidator(_non_blank)]


def _verdict(allowed: frozenset[Verdict], why: str) -> BeforeValidator:
    """A verdict given by name (or as a Verdict) that must be one of ``allowed``."""
    names = ", ".join(sorted(verdict.value for verdict in allowed))

    def check(value: Any) -> Verdict:
        try:
            verdict = Verdict(value)
        except ValueError:
            raise ValueError(f"unknown verdict {show(value)}; allowed: {names}") from None
        if verdict not in allowed:
            raise ValueError(f"{verdict.value!r} {why}; allowed: {names}")
        return verdict

    return BeforeValidator(check)


RetryableVerdict = Annotated[
    Verdict, _verdict(RETRYABLE_VERDICTS, "is never retried (retrying cannot change it)")
]
#: Breaker failures may not be verdicts that say nothing about a target's health.
BreakerVerdict = Annotated[
    Verdict, _verdict(verdicts_where("may_trip"), "says nothing about the target's health")
]
ForceableVerdict = Annotated[Verdict, _verdict(verdicts_where("forced_as"), "is not a failure")]


class Model(pydantic.BaseModel):
    """Frozen, strict, closed: built once and valid, or a ConfigError naming every mistake."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def __init__(self, /, **data: Any) -> None:
        validated(type(self), lambda: super(Model, self).__init__(**data))

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> Self:
        """Validate ``obj`` (a dict, or an instance); a mistake is a ConfigError, as in ``__init__``."""
        return validated(cls, lambda: super(Model, cls).model_validate(obj, **options))


def refuse(found: list[tuple[Loc, str]]) -> None:
    """Raise the mistakes a model's own check found, if any."""
    if found:
        raise Problems(found)


def ordered(model: _M, pairs: list[tuple[str, str]], why: str) -> _M:
    """Refuse every ``low <= high`` pair ``model`` breaks, blamed on the key that was set.

    The blame goes to the key the caller set (the higher one when both were); a pair left at
    its defaults cannot break.
    """
    needs: dict[str, list[str]] = {}
    for low, high in pairs:
        low_value, high_value = getattr(model, low), getattr(model, high)
        if low_value <= high_value:
            continue
        if high in model.model_fields_set:
            needs.setdefault(high, []).append(f">= {low} ({low_value!r})")
        else:
            needs.setdefault(low, []).append(f"<= {high} ({high_value!r})")
    refuse(
        [
            ((key,), f"must be {' and '.join(need)}, got {getattr(model, key)!r} ({why})")
            for key, need in needs.items()
        ]
    )
    return model
